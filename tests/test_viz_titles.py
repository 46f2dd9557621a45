"""Panel and figure titles of plot_segment_scores are wrapped to stay over their own panel."""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.viz import plot_segment_scores, wrap_to_width

LONG = [
    "Grad-CAM (model.backbone.encoder.layers.11.attention.output.dense)",
    "Integrative CAM (model.backbone.encoder.layers.11.attention)",
    "FeatureAblation (baseline 0, perturbations per eval 1)",
]


def test_long_method_names_do_not_run_over_each_other_or_past_the_figure():
    mask = torch.zeros(32, 32, dtype=torch.long)
    mask[16:] = 1
    figure = plot_segment_scores(
        torch.rand(3, 32, 32),
        mask,
        {name: torch.randn(2) for name in LONG},
        title="a figure title much longer than the figure is wide " * 8,
    )
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    titles = [axis.title for axis in figure.axes if axis.get_title()]
    boxes = [title.get_window_extent(renderer) for title in titles]
    assert len(boxes) == 4
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 <= right.x0, (left, right)
    # the words are all there, in order (a space where a line breaks is dropped)
    assert ["".join(t.get_text().split()) for t in titles[1:]] == ["".join(n.split()) for n in LONG]
    whole = figure._suptitle.get_window_extent(renderer)
    assert figure.bbox.x0 <= whole.x0 and whole.x1 <= figure.bbox.x1


@pytest.mark.parametrize("inches", [0.3, 1.0, 3.6])
def test_wrap_to_width_keeps_every_character_and_line_breaks_given(inches):
    text = "photo_with_a_very_long_name_without_spaces_at_all.jpg\nclass 3 (star), 4 segments"
    wrapped = wrap_to_width(text, inches, 9)
    assert "".join(wrapped.split()) == "".join(text.split())
    assert wrap_to_width("short", 3.6, 9) == "short"
