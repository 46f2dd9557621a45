"""The command's figure shows the photo and every method's map at one size, row after row."""

import pytest

from ctc_plugin import viz
from ctc_plugin.cli import main


def test_the_photo_and_every_method_are_drawn_at_one_size(tmp_path, monkeypatch):
    drawn = []
    save = viz.save_figure

    def keep_sizes(figure, path, dpi=100):
        figure.canvas.draw()
        drawn.extend(axis.get_window_extent() for axis in figure.axes if axis.images)
        return save(figure, path, dpi)

    monkeypatch.setattr(viz, "save_figure", keep_sizes)
    args = ["demo", "--segmenter", "grid", "--segments", "4", "--no-progress"]
    out = tmp_path / "demo.png"
    assert main([*args, "--method", "ctc", "feature-ablation", "--out", str(out)]) == 0
    assert out.exists()
    # The photo and the two maps (colour bars hold no image).
    photo, *maps = drawn
    assert len(maps) == 2
    for panel in maps:
        assert panel.width == pytest.approx(photo.width, rel=0.02)
        assert panel.height == pytest.approx(photo.height, rel=0.02)
    # The photo's column was as wide as a method's with its colour bar: a wide empty gap.
    gap_after_photo = maps[0].x0 - photo.x1
    gap_between_methods = maps[1].x0 - maps[0].x1  # a colour bar with its labels
    assert gap_after_photo < 0.75 * gap_between_methods, (gap_after_photo, gap_between_methods)
