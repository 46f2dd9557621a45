"""The sigmoid-based phi keep their alpha for large logits (1 - sigmoid(s) underflowed to 0)."""

from __future__ import annotations

import math

import pytest
import torch

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam.alpha import BUILTIN_PHI, alpha_terms
from tests.cam.cam_models import tiny_cnn

SCORES = torch.tensor([40.0, 60.0, 300.0, -40.0])


def _expected(name: str, s: float) -> tuple[float, float]:
    """(phi'', phi''') / max(|phi''|, |phi'''|), from closed forms in e^-|s| (no cancellation)."""
    e = math.exp(-abs(s))
    p, r = (1 / (1 + e), e / (1 + e)) if s > 0 else (e / (1 + e), 1 / (1 + e))
    q = p * r
    d2, d3 = (q, q * (r - p)) if name == "softplus" else (q * (r - p), q * (1 - 6 * q))
    scale = max(abs(d2), abs(d3))
    return d2 / scale, d3 / scale


@pytest.mark.parametrize("name", ["softplus", "sigmoid"])
def test_alpha_terms_of_large_logits_are_not_the_underflow_fallback(name):
    terms = alpha_terms(BUILTIN_PHI[name], SCORES)
    assert terms.sign.flatten().tolist() == [1.0] * len(SCORES)
    assert not terms.gradcam.any()  # phi'' and phi''' are not 0 there, only tiny
    for i, s in enumerate(SCORES.tolist()):
        p2, p3 = _expected(name, s)
        assert terms.p2.flatten()[i].item() == pytest.approx(p2, rel=1e-5)
        assert terms.p3.flatten()[i].item() == pytest.approx(p3, rel=1e-5)


def test_sigmoid_phi_explains_a_confident_prediction():
    """A logit of ~40 gave an all-zero map: sign(phi') was 0 once 1 - sigmoid(40) was 0."""
    model = tiny_cnn()
    with torch.no_grad():
        model.head[2].bias[1] += 40.0
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert model(x)[:, 1].min() > 37  # past the float64 underflow of 1 - sigmoid(s)
    maps = IntegrativeCAM(model, phi="sigmoid").attribute(x, target=1)
    assert maps.amax(dim=(1, 2, 3)).min() > 0.5
