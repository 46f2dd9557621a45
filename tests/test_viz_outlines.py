"""The image's panel: thin segment outlines whatever the image's size; the evidence named.

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


@pytest.mark.parametrize(
    ("evidence", "title"),
    [
        (torch.zeros(8, 8, dtype=torch.bool), "1 segment + evidence (no pixel)"),
        (torch.ones(8, 8, dtype=torch.bool), "1 segment + evidence (every pixel)"),
        (torch.arange(8)[:, None].expand(8, 8) < 4, "1 segment + evidence"),
    ],
)
def test_evidence_without_a_border_is_named_not_left_invisible(evidence, title):
    # evidence of no pixel or of every pixel has no contour: the title said "+ evidence" and
    # nothing was drawn
    figure = plot_segment_scores(
        torch.rand(3, 8, 8), torch.zeros(8, 8, dtype=torch.long), [1.0], evidence=evidence
    )
    assert figure.axes[0].get_title() == title
