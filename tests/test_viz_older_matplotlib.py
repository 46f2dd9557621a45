"""plot_segment_scores draws with matplotlib before 3.10, which pyproject.toml takes (>= 3.7).

``Artist.get_figure(root=...)`` is matplotlib 3.10's: with 3.9.4 every call failed with
``TypeError: Artist.get_figure() got an unexpected keyword argument 'root'``. Here
the package's own calls of ``get_figure`` are given its signature before 3.10 (no ``root``).
"""

from __future__ import annotations

import sys

import pytest
import torch
from matplotlib.artist import Artist
from matplotlib.figure import FigureBase

from ctc_plugin.viz import new_rows_figure, plot_segment_scores

MASK = torch.zeros(8, 12, dtype=torch.long)
MASK[:, 6:] = 1


@pytest.fixture
def get_figure_before_3_10(monkeypatch):
    """The package's calls of ``get_figure`` take no arguments, as before 3.10.

    matplotlib's own calls keep its 3.10 signature (it calls ``get_figure(root=False)``).
    """
    for kind in (Artist, FigureBase):
        if "get_figure" not in kind.__dict__:  # FigureBase's own: 3.10 and later
            continue
        original = kind.__dict__["get_figure"]

        def get_figure(self, *args, original=original, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("ctc_plugin") and (args or kwargs):
                raise TypeError("get_figure() got an unexpected keyword argument (before 3.10)")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(kind, "get_figure", get_figure)


def test_a_figure_of_its_own(get_figure_before_3_10):
    figure = plot_segment_scores(torch.rand(3, 8, 12), MASK, {"a": [1.0, -1.0]}, title="t")
    assert len(figure.axes) == 3  # the image, a panel and its colour bar
    figure.canvas.draw()


def test_rows_of_subfigures(get_figure_before_3_10):
    figure, rows = new_rows_figure([3.6, 1.8], 1)
    for row in rows:
        drawn = plot_segment_scores(torch.rand(3, 8, 12), MASK, {"a": [1.0, -1.0]}, axes=row)
        assert drawn is figure
    figure.canvas.draw()
