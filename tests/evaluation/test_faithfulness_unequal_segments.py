"""Segment curves with segments of unequal sizes, and the probability output, by hand.

The module's contract: features are ranked by their *mean* relevance (IROF), the x axis is the
fraction of the image *area* moved, and ``output="probability"`` is the softmax probability of
the target over all classes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ctc_plugin.evaluation.faithfulness import perturbation_curve


class ThreeClasses(nn.Module):
    """logits ``(sum(w * x), 1, -0.5)``: the target's contributions are ``w * x`` per pixel."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = (x * self.weight).flatten(1).sum(1)
        return torch.stack([first, torch.ones_like(first), torch.full_like(first, -0.5)], 1)


def _unequal_segments():
    """A 4 x 4 image of ones, segment A one pixel, B three pixels, C the other twelve.

    Contributions: A 4, B 3 (1 each), C 3 (0.25 each). Relevance: A 5 (mean 5, sum 5), B 2 each
    (mean 2, sum 6), C 1 each (mean 1, sum 12): by mean A, B, C; by sum C, B, A.
    """
    features = torch.full((4, 4), 2)
    features[0, 0] = 0
    features[0, 1:] = 1
    weight = torch.full((1, 1, 4, 4), 0.25, dtype=torch.float64)
    weight[..., 0, 0] = 4.0
    weight[..., 0, 1:] = 1.0
    relevance = torch.ones(1, 4, 4, dtype=torch.float64)
    relevance[:, 0, 0] = 5.0
    relevance[:, 0, 1:] = 2.0
    image = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    return ThreeClasses(weight), image, relevance, features[None, None]


def test_segments_move_by_mean_relevance_on_an_area_axis():
    model, image, relevance, features = _unequal_segments()
    curve = perturbation_curve(
        model, image, 0, relevance, "deletion", "morf", feature_mask=features, steps=4,
        output="logit",
    )  # fmt: skip
    # measured after A, B, C: area 1/16, 4/16, 16/16, scores 6, 3, 0; then on the grid
    measured_area, measured = [0, 1 / 16, 4 / 16, 1], [10, 6, 3, 0]
    expected = np.interp([0, 0.25, 0.5, 0.75, 1], measured_area, measured)
    np.testing.assert_allclose(curve.fractions.numpy(), [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(curve.scores[0].numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(expected, [10, 3, 2, 1, 0], atol=1e-12)  # worked by hand


def test_insertion_least_relevant_first_by_mean_relevance():
    model, image, relevance, features = _unequal_segments()
    curve = perturbation_curve(
        model, image, 0, relevance, "insertion", "lerf", feature_mask=features, steps=16,
        output="logit",
    )  # fmt: skip
    # C (12 pixels, 3) first, then B (3 pixels, 3), then A (1 pixel, 4)
    expected = np.interp(np.arange(17) / 16, [0, 12 / 16, 15 / 16, 1], [0, 3, 6, 10])
    np.testing.assert_allclose(curve.scores[0].numpy(), expected, atol=1e-12)


def test_probability_is_the_softmax_over_all_classes():
    model, image, relevance, _ = _unequal_segments()
    curve = perturbation_curve(
        model, image, 0, relevance, "deletion", "morf", steps=16, output="probability"
    )
    # pixels by relevance: A (4), B's three (1 each), then C's twelve (0.25 each)
    removed = np.cumsum([0, 4, 1, 1, 1] + [0.25] * 12)
    logit = 10 - removed
    expected = [math.exp(v) / (math.exp(v) + math.exp(1) + math.exp(-0.5)) for v in logit]
    np.testing.assert_allclose(curve.scores[0].numpy(), expected, rtol=1e-12)
