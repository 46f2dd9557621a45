"""``explain --sam-checkpoint`` without ``--segmenter sam`` is refused, not silently ignored."""

import pytest

from ctc_plugin.cli import main
from ctc_plugin.datasets import sample_path


@pytest.mark.parametrize("segmenter", [[], ["--segmenter", "grid"]])
def test_sam_checkpoint_with_another_segmenter_is_refused(tmp_path, capsys, segmenter):
    out = tmp_path / "figure.png"
    checkpoint = str(sample_path("shapes", "image"))  # any readable file: never loaded
    args = ["explain", *segmenter, "--sam-checkpoint", checkpoint, "--no-progress"]
    assert main([*args, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("ctc-plugin explain: error: --sam-checkpoint")
    assert "--segmenter sam" in error
    assert not out.exists()
