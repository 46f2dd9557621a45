"""Figures of very wide and very tall images keep a readable size."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ctc_plugin.features import GridSegmenter  # noqa: E402
from ctc_plugin.viz import PANEL_SIDE, panel_width, plot_segment_scores  # noqa: E402


def _two_method_figure(height: int, width: int):
    """The figure of a random image, its 2 x 2 grid and two methods' scores."""
    image = torch.rand(1, 3, height, width)
    mask = GridSegmenter(cells=2)(image)
    return plot_segment_scores(
        image[0], mask[0, 0], {"a": torch.arange(4.0), "b": -torch.arange(4.0)}
    )


@pytest.mark.parametrize(("height", "width"), [(8, 800), (800, 8), (30, 40)])
def test_a_figure_is_at_most_three_panel_heights_wide_per_panel(height, width):
    figure = _two_method_figure(height, width)
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
    figure = _two_method_figure(height, width)
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


def _ranks_drawn(figure, segments):
    """(rank, segment under the label) of the first method panel."""
    drawn = []
    for text in figure.axes[1].texts:
        x, y = text.get_position()
        drawn.append((int(text.get_text()), int(segments[int(round(y)), int(round(x))])))
    return sorted(drawn)


def test_nan_and_infinite_scores_get_no_rank_and_leave_the_colour_range_alone():
    """Sorting with NaN drew the best segment third; one inf set the range to +-0.1."""
    segments = torch.arange(6).repeat_interleave(8).reshape(1, 48).expand(8, 48)
    scores = {0: 1.0, 1: float("nan"), 2: 3.0, 3: -1.0, 4: float("inf"), 5: 0.2}
    figure = plot_segment_scores(torch.rand(3, 8, 48), segments, {"m": scores}, top_k=6)
    try:
        assert _ranks_drawn(figure, segments.numpy()) == [(1, 2), (2, 0), (3, 5), (4, 3)]
        assert figure.axes[1].images[-1].get_clim() == (-3.0, 3.0)
    finally:
        plt.close(figure)


def test_a_rank_is_written_inside_its_segment_not_at_its_centroid():
    """A ring's centroid lies on the segment it surrounds, which took the ring's rank."""
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    centre = ((rows - 15.5).abs() < 6) & ((cols - 15.5).abs() < 6)
    segments = centre.long()  # 1 inside, 0 the ring around it
    figure = plot_segment_scores(torch.rand(3, 32, 32), segments, {"m": {0: 5.0, 1: 1.0}})
    try:
        assert _ranks_drawn(figure, segments.numpy()) == [(1, 0), (2, 1)]
    finally:
        plt.close(figure)


@pytest.mark.parametrize("scale", [255.0, -1.0])
def test_an_image_outside_zero_one_is_refused_not_drawn_clipped(scale):
    with pytest.raises(ValueError, match=r"drawn as RGB in \[0, 1\].*image / 255"):
        plot_segment_scores(torch.rand(3, 8, 8) * scale, torch.zeros(8, 8, dtype=torch.long), {})


def test_an_infinite_score_is_drawn_at_the_end_of_the_range_not_blank():
    segments = torch.arange(3).repeat_interleave(8).reshape(1, 24).expand(8, 24)
    scores = {0: 1.0, 1: float("inf"), 2: float("-inf")}
    figure = plot_segment_scores(torch.rand(3, 8, 24), segments, {"m": scores})
    try:
        drawn = figure.axes[1].images[-1].get_array()
        assert float(drawn[0, 12]) == 1.0 and float(drawn[0, 20]) == -1.0
        assert not np.ma.is_masked(drawn[0, 12])
    finally:
        plt.close(figure)


@pytest.mark.parametrize(
    ("scores", "top_k", "drawn"),
    [
        # all equal (a method that found nothing): which segments got 1..5 was arbitrary
        ({f: 0.0 for f in range(6)}, 5, []),
        # a tie shares its rank, and the next rank counts it
        ({0: 2.0, 1: 1.0, 2: 1.0, 3: 0.5, 4: 0.0, 5: -1.0}, 4, [(1, 0), (2, 1), (2, 2), (4, 3)]),
        # a tie crossing the cut: neither of the two
        ({0: 2.0, 1: 1.0, 2: 1.0, 3: 0.5, 4: 0.0, 5: -1.0}, 2, [(1, 0)]),
    ],
)
def test_tied_scores_share_a_rank_and_a_tie_across_the_cut_gets_none(scores, top_k, drawn):
    segments = torch.arange(6).repeat_interleave(8).reshape(1, 48).expand(8, 48)
    figure = plot_segment_scores(torch.rand(3, 8, 48), segments, {"m": scores}, top_k=top_k)
    try:
        assert _ranks_drawn(figure, segments.numpy()) == drawn
    finally:
        plt.close(figure)


def test_many_methods_continue_on_further_rows_at_the_same_panel_size():
    """A dozen methods made one row thirteen panels wide (57 inches)."""
    from ctc_plugin.viz import PANELS_PER_ROW

    image = torch.rand(1, 3, 30, 40)
    mask = GridSegmenter(cells=2)(image)
    panels = {f"method {i}": torch.arange(4.0) * (i + 1) for i in range(12)}
    figure = plot_segment_scores(image[0], mask[0, 0], panels)
    five = plot_segment_scores(image[0], mask[0, 0], dict(list(panels.items())[:4]))
    try:
        drawn = [axis for axis in figure.axes if axis.images]  # colour bars have none
        assert len(drawn) == 13 and [a.get_title() for a in drawn[1:]] == list(panels)
        width, height = figure.get_size_inches()
        assert width == pytest.approx(five.get_size_inches()[0])  # as wide as one full row
        assert height == pytest.approx(3 * five.get_size_inches()[1])  # 13 panels: 3 rows
        figure.canvas.draw()
        boxes = [axis.get_window_extent() for axis in drawn]
        rows = sorted({round(box.y0) for box in boxes}, reverse=True)
        assert len(rows) == 3 and PANELS_PER_ROW == 5
        sizes = {(round(box.width), round(box.height)) for box in boxes}
        assert len(sizes) == 1, sizes  # every panel the same size
    finally:
        plt.close(figure)
        plt.close(five)


def test_a_strip_s_rank_is_written_at_its_middle_not_at_its_end():
    """Every pixel of a strip's middle line is as far from its border: the first was taken,
    at the strip's top, beside the rank of the strip next to it."""
    segments = torch.zeros(120, 20, dtype=torch.long)
    segments[:, 10:] = 1  # two strips side by side, 120 x 10 each
    figure = plot_segment_scores(torch.rand(3, 120, 20), segments, {"m": {0: 2.0, 1: 1.0}})
    try:
        rows = sorted(text.get_position()[1] for text in figure.axes[1].texts)
        assert rows == [pytest.approx(59.5, abs=1)] * 2
    finally:
        plt.close(figure)
