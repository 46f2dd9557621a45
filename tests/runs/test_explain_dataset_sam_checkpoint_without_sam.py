"""``explain-dataset --sam-checkpoint`` without ``--segmenter sam`` is refused, not ignored.

Before, the checkpoint was silently ignored and the run segmented with superpixels.
"""

import pytest

from ctc_plugin.cli import main
from ctc_plugin.datasets import sample_path


@pytest.mark.parametrize("segmenter", [[], ["--segmenter", "grid"]])
def test_sam_checkpoint_with_another_segmenter_is_refused(tmp_path, capsys, segmenter):
    out = tmp_path / "run"
    checkpoint = str(sample_path("shapes", "image"))  # any readable file: never loaded
    args = ["explain-dataset", "shapes", "--images", "1", "--methods", "ctc", *segmenter]
    args += ["--sam-checkpoint", checkpoint, "--no-progress", "--out", str(out)]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert error.startswith("ctc-plugin explain-dataset: error: --sam-checkpoint")
    assert "--segmenter sam" in error
    assert not out.exists()  # refused before the run folder is made


def test_the_python_api_refuses_it_too(tmp_path):
    from ctc_plugin.runs import explain_dataset

    checkpoint = sample_path("shapes", "image")
    with pytest.raises(ValueError, match=r"sam_checkpoint is for segmenter='sam'.*'grid'"):
        explain_dataset(
            "shapes",
            ["ctc"],
            tmp_path / "run",
            images=1,
            segmenter="grid",
            sam_checkpoint=checkpoint,
            show_progress=False,
        )
    assert not (tmp_path / "run").exists()
