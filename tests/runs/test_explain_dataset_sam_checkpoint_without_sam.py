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
