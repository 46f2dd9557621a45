"""The refusal of a SAM checkpoint without the SAM segmenter has one home and one message.

Before, ``explain``, ``explain-dataset`` and ``explain_dataset`` each wrote the check and its
message themselves (two wordings for the same mistake).
"""

import pytest

from ctc_plugin.cli import main
from ctc_plugin.commands.explain_setup import check_sam_checkpoint
from ctc_plugin.datasets import sample_path


def test_the_commands_and_the_api_give_the_same_message(tmp_path, capsys):
    from ctc_plugin.runs import explain_dataset

    checkpoint = str(sample_path("shapes", "image"))  # any readable file: never loaded
    with pytest.raises(ValueError) as caught:
        check_sam_checkpoint("grid", checkpoint)
    expected = str(caught.value)
    assert "--sam-checkpoint" in expected and "segmenter='sam'" in expected
    with pytest.raises(ValueError) as api:
        explain_dataset(
            "shapes", ["ctc"], tmp_path / "run", images=1, segmenter="grid",
            sam_checkpoint=checkpoint, show_progress=False,
        )  # fmt: skip
    assert str(api.value) == expected
    commands = {
        "explain": ["explain", "--out", str(tmp_path / "figure.png")],
        "explain-dataset": [
            "explain-dataset",
            "shapes",
            "--methods",
            "ctc",
            "--out",
            str(tmp_path / "run"),
        ],
    }
    for name, args in commands.items():
        assert main([*args, "--segmenter", "grid", "--sam-checkpoint", checkpoint]) == 2
        error = capsys.readouterr().err.strip()
        assert error == f"ctc-plugin {name}: error: {expected}"


def test_no_checkpoint_or_the_sam_segmenter_passes():
    check_sam_checkpoint("grid", None)
    check_sam_checkpoint("sam", "sam_vit_b_01ec64.pth")
