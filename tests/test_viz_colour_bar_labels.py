"""Each panel's colour bar says what one colour is: a segment's score or a pixel's value."""

from __future__ import annotations

import torch

from ctc_plugin import viz
from ctc_plugin.cli import main
from ctc_plugin.viz import COLOUR_BAR_LABELS, plot_segment_scores

MASK = torch.zeros(8, 12, dtype=torch.long)
MASK[:, 6:] = 1


def _bar_labels(figure) -> list[str]:
    """The labels of the colour bars, in panel order."""
    return [axis.get_ylabel() for axis in figure.axes if axis.get_label() == "<colorbar>"]


def test_segment_scores_and_maps_are_labelled_apart():
    figure = plot_segment_scores(
        torch.rand(3, 8, 12), MASK, {"scores": [1.0, -1.0], "map": torch.randn(8, 12)}
    )
    assert _bar_labels(figure) == [COLOUR_BAR_LABELS[False], COLOUR_BAR_LABELS[True]]
    assert all("0 white" in label for label in _bar_labels(figure))


def test_the_command_labels_ctc_s_scores_as_segment_scores_and_grad_cam_as_a_map(
    tmp_path, monkeypatch
):
    labels = []
    save = viz.save_figure

    def keep(figure, path, dpi=100):
        labels.extend(_bar_labels(figure))
        return save(figure, path, dpi)

    monkeypatch.setattr(viz, "save_figure", keep)
    argv = ["demo", "--segmenter", "grid", "--segments", "4", "--no-progress"]
    out = tmp_path / "demo.png"
    assert main([*argv, "--method", "ctc", "gradcam", "--out", str(out)]) == 0
    assert labels == [COLOUR_BAR_LABELS[False], COLOUR_BAR_LABELS[True]]
