"""``--sam-model-type`` takes the architectures the SAM adapter builds, checked while parsing.

Before, any text was accepted: silently without ``--segmenter sam``, and with it refused only
after the run folder was set up.
"""

import pytest

from ctc_plugin.cli import main
from ctc_plugin.commands.explain_setup import SAM_MODEL_TYPES
from tests.cli.parser_options import option_action


@pytest.mark.parametrize("segmenter", [[], ["--segmenter", "sam"]])
def test_an_unknown_sam_model_type_is_refused_while_parsing(tmp_path, capsys, segmenter):
    out = tmp_path / "run"
    argv = ["explain-dataset", "shapes", "--images", "2", "--methods", "ctc", *segmenter]
    assert main([*argv, "--sam-model-type", "foo", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("ctc-plugin explain-dataset: error: argument --sam-model-type: ")
    assert "invalid choice: 'foo'" in error and "\n" not in error
    assert not out.exists()


def test_the_choices_are_the_adapters_and_the_help_lists_them():
    sam = pytest.importorskip("ctc_plugin.adapters.sam")
    assert set(SAM_MODEL_TYPES) == set(sam.SAM_MODEL_TYPES)
    for command in ("explain", "explain-dataset"):
        option = option_action(command, "--sam-model-type")
        assert tuple(option.choices) == SAM_MODEL_TYPES
        assert f"one of {', '.join(SAM_MODEL_TYPES)} (" in option.help
