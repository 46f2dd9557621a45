"""plot_segment_scores takes tensors of any floating-point type, and ones that require grad.

A bfloat16 image, score or map (a model run in bfloat16) failed with torch's "Got unsupported
ScalarType BFloat16"; a mapping of scores that require grad warned from inside the package.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ctc_plugin.viz import plot_segment_scores

MASK = torch.zeros(8, 12, dtype=torch.long)
MASK[:, 6:] = 1


def painted(figure) -> np.ndarray:
    return np.ma.filled(figure.axes[1].images[1].get_array().astype(float), np.nan)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("form", ["scores", "map", "pair", "mapping"])
def test_every_floating_point_type_is_drawn(dtype, form):
    image = torch.rand(3, 8, 12).to(dtype)
    scores = torch.tensor([2.0, -1.0], dtype=dtype)
    value = {
        "scores": scores,
        "map": scores[MASK],
        "pair": (torch.tensor([0, 1]), scores),
        "mapping": {0: scores[0], 1: scores[1]},
    }[form]
    figure = plot_segment_scores(image, MASK, value)
    np.testing.assert_allclose(painted(figure), np.where(MASK.numpy() == 0, 2.0, -1.0))


def test_scores_that_require_grad_are_drawn_without_a_warning():
    scores = torch.tensor([2.0, -1.0], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for value in (scores, {0: scores[0], 1: scores[1]}, (torch.arange(2), scores)):
            plot_segment_scores(torch.rand(3, 8, 12, requires_grad=True), MASK, value)
