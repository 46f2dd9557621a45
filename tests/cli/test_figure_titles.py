"""The command's figure titles: file and class names drawn as written, and within the figure."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ctc_plugin import viz
from ctc_plugin.cli import main

FAST = ["--segmenter", "grid", "--segments", "4", "--no-progress"]


def _explain(tmp_path, monkeypatch, name: str, *options: str):
    """Run explain on a photo saved as ``name``; return the figure it wrote, laid out."""
    photo = tmp_path / name
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)).save(photo)
    drawn = []
    save = viz.save_figure

    def keep(figure, path, dpi=100):
        figure.canvas.draw()
        drawn.append(figure)
        return save(figure, path, dpi)

    monkeypatch.setattr(viz, "save_figure", keep)
    out = tmp_path / "figure.png"
    assert main(["explain", str(photo), *FAST, *options, "--out", str(out)]) == 0
    assert out.exists()
    return drawn[0]


@pytest.mark.parametrize("name", ["a$\\frac$b.png", "price $5 and $10.png"])
def test_a_file_name_with_dollar_signs_is_drawn_as_written_not_as_mathtext(
    tmp_path, monkeypatch, name
):
    # "$\frac$" made the figure's mathtext parser fail after every method had run; "$5 and
    # $10" was drawn in italics without its dollar signs
    figure = _explain(tmp_path, monkeypatch, name)
    title = figure.axes[0].title
    assert title.get_text().startswith(name)
    assert title.get_parse_math() is False


def test_a_long_file_name_is_wrapped_within_the_figure_and_over_its_own_panel(
    tmp_path, monkeypatch
):
    # the title of the photo's panel ran past the figure's left edge, cut off
    name = "IMG_20240101_123456_" + "a_long_description_of_the_photo_" * 3 + "final.png"
    figure = _explain(tmp_path, monkeypatch, name, "--method", "ctc", "gradcam")
    renderer = figure.canvas.get_renderer()
    edge = figure.bbox
    titles = [axis.title for axis in figure.axes if axis.get_title()]
    assert len(titles) == 3
    assert "".join(titles[0].get_text().split("\n")).startswith(name)
    boxes = [title.get_window_extent(renderer) for title in titles]
    for box in boxes:
        assert edge.x0 <= box.x0 and box.x1 <= edge.x1, (box, edge)
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 <= right.x0, (left, right)
