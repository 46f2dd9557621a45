"""The built-in ``phi`` at class scores where its derivatives overflow or underflow float64.

Only ``sign(phi')`` and the ratio ``phi'' : phi'''`` enter the weights, and the built-ins give
those directly (``Phi.ratios``): ``exp``'s are 1 : 1 at every score, so its maps at a score of
-800 or 800 are those at 0; softplus's and the sigmoid's tend to their limits. A ``phi`` whose
derivative is 0 at the score is refused, instead of an all-zero map.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin.cam import IntegrativeCAM
from ctc_plugin.cam.alpha import BUILTIN_PHI, alpha_terms


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip


def _shifted(model, score: float):
    """The model with class 1's score moved to ``score`` (the gradients unchanged)."""
    return lambda t: model(t) - model(t).detach()[:, 1:2] + score


@pytest.mark.parametrize("phi", ["exp", "softplus", "sigmoid"])
def test_built_in_phis_explain_scores_beyond_float64s_exponent_range(phi):
    model, x = _model(), torch.rand(2, 3, 8, 8)
    maps = {
        score: IntegrativeCAM(_shifted(model, score), phi=phi).attribute(x, 1)
        for score in (-800.0, -700.0, 0.0, 700.0, 800.0)
    }
    for score, cam in maps.items():
        assert torch.isfinite(cam).all() and (cam.amax(dim=(1, 2, 3)) > 0.5).all(), score
    if phi == "exp":  # Grad-CAM++ does not depend on the score at all
        for score in (-800.0, 800.0):
            torch.testing.assert_close(maps[score], maps[0.0])
    else:  # past 700 the ratios are at their limits
        torch.testing.assert_close(maps[800.0], maps[700.0])
        torch.testing.assert_close(maps[-800.0], maps[-700.0])


@pytest.mark.parametrize("phi", ["exp", "softplus", "sigmoid"])
def test_the_ratios_are_the_derivatives_normalised(phi):
    """Where the derivatives are finite, both ways give the same terms."""
    scores = torch.tensor([-30.0, -2.0, 0.0, 0.5, 3.0, 40.0], dtype=torch.float64)
    built_in = BUILTIN_PHI[phi]
    by_derivatives = type(built_in)(built_in.d1, built_in.d2, built_in.d3, phi)
    ours, theirs = alpha_terms(built_in, scores), alpha_terms(by_derivatives, scores)
    for name in ("sign", "p2", "p3"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name))


def test_a_phi_flat_at_the_score_is_refused():
    model, x = _model(), torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"phi' is 0 at scores .*choose a phi"):
        IntegrativeCAM(_shifted(model, -3.0), phi=torch.relu).attribute(x, 1)


@pytest.mark.parametrize("bias", ["False", "no", 0, None])
def test_bias_must_be_a_boolean(bias):
    with pytest.raises(TypeError, match="bias must be True or False"):
        IntegrativeCAM(_model(), bias=bias)
