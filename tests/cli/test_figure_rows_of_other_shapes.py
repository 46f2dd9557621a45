"""explain's figure keeps each row's panels together when the images have other shapes.

All rows shared one grid of columns as wide as the widest image's panels: under a panorama, a
portrait photo's panels floated apart, the photo alone on the left and its maps far right.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ctc_plugin import viz
from ctc_plugin.cli import main


def test_each_row_s_panels_stay_together(tmp_path, monkeypatch):
    paths = []
    for name, size in (("wide.png", (200, 40)), ("portrait.png", (45, 60))):
        paths.append(tmp_path / name)
        pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), np.uint8)
        Image.fromarray(pixels).save(paths[-1])
    rows = []
    save = viz.save_figure

    def keep(figure, path, dpi=100):
        figure.canvas.draw()
        panels = [axis.get_window_extent() for axis in figure.axes if axis.images]
        rows.extend([panels[:3], panels[3:]])
        return save(figure, path, dpi)

    monkeypatch.setattr(viz, "save_figure", keep)
    options = ["--segmenter", "grid", "--segments", "4", "--no-progress", "--resize", "40"]
    out = tmp_path / "figure.png"
    argv = ["explain", *map(str, paths), *options, "--crop", "none"]
    assert main([*argv, "--method", "ctc", "gradcam", "--out", str(out)]) == 0
    for photo, first, second in rows:
        # the photo and its maps at one size, the gaps as in a row of its own
        assert first.width == pytest.approx(photo.width, rel=0.02)
        assert first.x0 - photo.x1 < 0.75 * (second.x0 - first.x1), (photo, first, second)
        # between the maps: a colour bar with its labels, no more
        assert second.x0 - first.x1 < 2 * 100 * viz.COLOUR_BAR_WIDTH, (first, second)
