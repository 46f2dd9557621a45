"""save_figure refuses a dpi or a format it cannot write, clearly, before it writes anything.

A dpi of 2 failed in FreeType ("invalid ppem value"), True drew at 1 dpi, "100" failed in a
multiplication, NaN in an integer conversion, one far too large tried to allocate tens of GiB
(or hit matplotlib's 2^16 pixels), and an unknown suffix was refused only after the folders
of the path were made.
"""

from __future__ import annotations

import math

import pytest
import torch
from matplotlib.figure import Figure

from ctc_plugin.viz import MAX_PIXELS, plot_segment_scores, save_figure


def _figure():
    return plot_segment_scores(torch.rand(3, 8, 8), torch.zeros(8, 8, dtype=torch.long), [1.0])


@pytest.mark.parametrize("dpi", [2, 0, -5, True, "100", math.nan, math.inf])
def test_a_dpi_that_is_no_usable_number_is_refused(tmp_path, dpi):
    with pytest.raises(ValueError, match=r"dpi must be a number of pixels per inch from 10 up"):
        save_figure(_figure(), tmp_path / "new" / "figure.png", dpi=dpi)
    assert not (tmp_path / "new").exists()


def test_a_dpi_making_too_many_pixels_is_refused_with_the_largest_that_fits(tmp_path):
    figure = Figure(figsize=(2, 1))
    with pytest.raises(ValueError, match="pixels, more than") as refused:
        save_figure(figure, tmp_path / "figure.png", dpi=100_000)
    fits = int(str(refused.value).rsplit(" ", 1)[-1])
    assert 2 * fits**2 <= MAX_PIXELS < 2 * (fits + 1) ** 2
    assert save_figure(figure, tmp_path / "figure.png", dpi=50).exists()


def test_an_unknown_suffix_is_refused_before_any_folder_is_made(tmp_path):
    with pytest.raises(ValueError, match=r"suffix \.xyz names no format.*\.png"):
        save_figure(_figure(), tmp_path / "new" / "deeper" / "figure.xyz")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name", ["figure.png", "figure.PDF", "figure.svg", "figure.jpg", "plain"])
def test_the_formats_still_written(tmp_path, name):
    written = save_figure(_figure(), tmp_path / "a" / name, dpi=20)
    assert written.stat().st_size > 0
