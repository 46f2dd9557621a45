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
