"""The segments' outlines on the image's panel are thin, whatever the image's size.

An outline was a pixel of each segment on each side of a border: on a small image, or one of
many small segments (a thousand SAM masks), the image's panel was mostly yellow.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctc_plugin.viz import plot_segment_scores


def _outline_share(image: torch.Tensor, segments: torch.Tensor) -> float:
    """The share of the image's panel drawn in the outlines' yellow."""
    scores = torch.zeros(int(segments.max()) + 1)
    figure = plot_segment_scores(image, segments, scores)
    drawn = np.asarray(figure.axes[0].images[0].get_array())
    height, width = segments.shape
    assert figure.axes[0].images[0].get_extent() == [-0.5, width - 0.5, height - 0.5, -0.5]
    yellow = (drawn[..., 0] == 1) & (drawn[..., 1] == 1) & (drawn[..., 2] == 0)
    return float(yellow.mean())


@pytest.mark.parametrize(("side", "cells"), [(8, 2), (224, 36), (60, 20)])
def test_the_outlines_cover_little_of_the_image(side, cells):
    image = torch.rand(3, side, side) * 0.5  # no pixel of the image itself is yellow
    rows = torch.arange(side) * cells // side
    segments = rows[:, None] * cells + rows[None, :]  # cells x cells squares
    assert _outline_share(image, segments) < 0.25
