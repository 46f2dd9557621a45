"""Figures of very wide and very tall images keep a readable size."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ctc_plugin.features import GridSegmenter  # noqa: E402
from ctc_plugin.viz import PANEL_SIDE, panel_width, plot_segment_scores  # noqa: E402


@pytest.mark.parametrize(("height", "width"), [(8, 800), (800, 8), (30, 40)])
def test_a_figure_is_at_most_three_panel_heights_wide_per_panel(height, width):
    image = torch.rand(1, 3, height, width)
    mask = GridSegmenter(cells=2)(image)
    figure = plot_segment_scores(
        image[0], mask[0, 0], {"a": torch.arange(4.0), "b": -torch.arange(4.0)}
    )
    try:
        figure_width, figure_height = figure.get_size_inches()
        # Three panels and two colour bars; a 100:1 panorama was 1080 inches wide.
        assert figure_width <= 3 * (3 * PANEL_SIDE) + 2 * 1.0
        assert figure_width >= 3 * 0.6 * PANEL_SIDE and figure_height >= PANEL_SIDE
    finally:
        plt.close(figure)


def test_panel_width_follows_the_aspect_ratio_within_its_range():
    assert panel_width(30, 40) == pytest.approx(PANEL_SIDE * 40 / 30)
    assert panel_width(10, 2000) == pytest.approx(3 * PANEL_SIDE)
    assert panel_width(2000, 10) == pytest.approx(0.6 * PANEL_SIDE)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (30, 40), (40, 30)])
def test_every_panel_shows_its_image_at_the_same_size_without_a_gap_after_the_first(height, width):
    image = torch.rand(1, 3, height, width)
    mask = GridSegmenter(cells=2)(image)
    figure = plot_segment_scores(
        image[0], mask[0, 0], {"a": torch.arange(4.0), "b": -torch.arange(4.0)}
    )
    try:
        figure.canvas.draw()
        photo, first, second = (axis.get_window_extent() for axis in figure.axes[:3])
        for panel in (first, second):
            assert panel.width == pytest.approx(photo.width, rel=0.02)
            assert panel.height == pytest.approx(photo.height, rel=0.02)
        # The photo's column had no colour bar but as much room as the others: its image
        # floated in a gap as wide as a colour bar with its labels.
        gap_after_photo = first.x0 - photo.x1
        gap_between_methods = second.x0 - first.x1
        assert gap_after_photo < 0.5 * gap_between_methods
    finally:
        plt.close(figure)
