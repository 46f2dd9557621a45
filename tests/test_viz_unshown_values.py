"""A panel says under it what its colours cannot: NaN, infinite, missing and all-zero scores.

A NaN score and a segment without one were left blank, like a score of 0 on the grayscale
image; an infinite score was drawn like the largest finite one; scores of ids the mask does not
hold were dropped; a panel of zeros got the range [-1, 1]; none of it was said.
"""

from __future__ import annotations

import math

import pytest
import torch

from ctc_plugin.features import GridSegmenter
from ctc_plugin.viz import plot_segment_scores

IMAGE = torch.rand(3, 24, 36)
MASK = GridSegmenter(cells=(2, 3))(IMAGE[None])[0, 0]  # ids 0..5


def _note(scores, mask=MASK) -> str:
    figure = plot_segment_scores(IMAGE, mask, {"m": scores})
    return " ".join(figure.axes[1].get_xlabel().split())


@pytest.mark.parametrize(
    ("scores", "said"),
    [
        ([math.nan] * 6, "NaN: 6 segments (blank)"),
        ([1.0, math.inf, -math.inf, math.nan, 2.0, 0.0], "+inf: 1 segment (drawn as the"),
        ([1.0, math.inf, -math.inf, math.nan, 2.0, 0.0], "-inf: 1 segment"),
        ([0.0] * 6, "all 0"),
        ({0: 1.0, 1: 2.0}, "no score: 4 segments (blank)"),
        ({0: 1.0, 1: 2.0, 70: 3.0}, "1 score of ids not in the feature mask (not drawn)"),
    ],
)
def test_what_the_colours_cannot_tell_is_written_under_the_panel(scores, said):
    assert said in _note(torch.tensor(scores) if isinstance(scores, list) else scores)


def test_a_map_s_non_finite_pixels_are_counted_as_pixels():
    heat = torch.randn(24, 36)
    heat[0, :3] = math.nan
    heat[5, 5] = math.inf
    note = _note(heat)
    assert "NaN: 3 pixels" in note
    assert "+inf: 1 pixel " in note


def test_ordinary_scores_get_no_note():
    assert _note(torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, -1.0])) == ""
