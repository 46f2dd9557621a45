"""The generalised alpha against Grad-CAM++'s definition, with derivatives taken by autograd."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ctc_plugin.cam import alpha
from ctc_plugin.cam.alpha import BUILTIN_PHI, alpha_terms, channel_weights, resolve_phi

PHIS = {"exp": torch.exp, "softplus": nn.functional.softplus, "sigmoid": torch.sigmoid}


def derivatives(y: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
    """The first three derivatives of y(t) by repeated autograd (None, a constant, is 0)."""
    out, current = [], y
    for _ in range(3):
        (current,) = torch.autograd.grad(current, t, create_graph=True, allow_unused=True)
        if current is None:
            current = torch.zeros((), dtype=t.dtype, requires_grad=True) * t
        out.append(current.detach())
    return out


def reference_weights(head: nn.Module, act: torch.Tensor, phi) -> torch.Tensor:
    """Grad-CAM++ weights of Y = phi(S(A)) from the definition, element by element.

    alpha_ij = Y''_ij / (2 Y''_ij + sum(A) Y'''_ij) and w = sum_ij alpha_ij relu(Y'_ij), where
    Y^(k)_ij is the k-th derivative of Y along the single element A_ij (torch.func, no formula).
    Where Y'' and Y''' have other signs (softplus at positive scores, the sigmoid
    between about -1.32 and 0 and above about 1.32) an alpha
    outside [0, 1/2] is taken as 1/2: past the zero of the denominator the expansion that
    alpha comes from does not hold.
    """
    _, c, h, w = act.shape
    weights = torch.zeros(c, dtype=act.dtype)
    for k in range(c):
        total = act[0, k].sum()
        for i in range(h):
            for j in range(w):
                direction = torch.zeros_like(act)
                direction[0, k, i, j] = 1

                t = torch.zeros((), dtype=act.dtype, requires_grad=True)
                d1, d2, d3 = derivatives(phi(head(act + t * direction)[0]), t)
                if d1 == 0 and d2 == 0:
                    continue
                alpha = d2 / (2 * d2 + total * d3)
                if d2 * d3 * d1 < 0 and not 0 <= alpha <= 0.5:
                    alpha = torch.tensor(0.5, dtype=act.dtype)
                weights[k] += alpha * torch.relu(d1)
    return weights


@pytest.mark.parametrize("name", sorted(PHIS))
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_weights_match_the_definition(seed: int, name: str) -> None:
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6, 1)).double()
    head = nn.Sequential(head, nn.Flatten(0))
    act = torch.relu(torch.randn(1, 2, 2, 3, dtype=torch.float64)) + 0.1
    a = act.clone().requires_grad_(True)
    score = head(a)
    (grad,) = torch.autograd.grad(score.sum(), a)
    terms = alpha_terms(BUILTIN_PHI[name], score.detach())
    with mock.patch.object(alpha, "ALPHA_EPS", 1e-30):  # the definition has none
        ours = channel_weights(grad, act, terms)[0]
    expected = reference_weights(head, act, PHIS[name])
    # ours drops the positive per-example factor |phi'(S)|, which min-max normalisation removes
    s = score.detach().requires_grad_(True)
    (d1,) = torch.autograd.grad(PHIS[name](s).sum(), s)
    torch.testing.assert_close(ours * d1.abs(), expected, atol=1e-6, rtol=1e-4)


def test_identity_is_gradcam() -> None:
    grad = torch.randn(2, 3, 4, 4)
    act = torch.rand(2, 3, 4, 4)
    terms = alpha_terms(BUILTIN_PHI["identity"], torch.randn(2))
    torch.testing.assert_close(channel_weights(grad, act, terms), grad.mean(dim=(2, 3)))


@pytest.mark.parametrize("name", sorted(PHIS))
def test_builtin_derivatives_match_autodiff(name: str) -> None:
    scores = torch.linspace(-4, 4, 9, dtype=torch.float64)
    builtin, auto = BUILTIN_PHI[name], resolve_phi(PHIS[name])
    for ours, theirs in ((builtin.d1, auto.d1), (builtin.d2, auto.d2), (builtin.d3, auto.d3)):
        torch.testing.assert_close(ours(scores), theirs(scores))


def test_exp_terms_do_not_overflow_for_large_scores() -> None:
    terms = alpha_terms(BUILTIN_PHI["exp"], torch.tensor([150.0, -150.0]))
    assert torch.equal(terms.p2.flatten(), torch.ones(2))
    assert torch.equal(terms.p3.flatten(), torch.ones(2))


def test_bad_phi() -> None:
    with pytest.raises(ValueError, match="unknown phi"):
        resolve_phi("tanh")
    with pytest.raises(TypeError):
        resolve_phi(3)


def test_a_vanishing_denominator_under_a_negative_gradient_gives_a_finite_weight(monkeypatch):
    """g = -1, p2 = p3 = 1, sum(A) = 2: g^2 (2 p2 + p3 sum(A) g) = 0, and the ReLU numerator is 0.

    Found on a zoo ResNet image, where float32 rounding made ``g^2(...) + eps`` exactly 0 and the
    channel weight NaN. The term must count 0; the positive gradient's term is kept.
    """
    monkeypatch.setattr(alpha, "ALPHA_EPS", 0.0)  # make the cancellation exact
    terms = alpha_terms(resolve_phi("exp"), torch.zeros(1))
    grad = torch.tensor([[[[-1.0, 0.5]]]])
    act = torch.tensor([[[[1.0, 1.0]]]])  # sum(A) = 2
    weights = channel_weights(grad, act, terms)
    p2, p3 = terms.p2.item(), terms.p3.item()
    alpha_positive = p2 * 0.5**2 / (0.5**2 * (2 * p2 + p3 * 2.0 * 0.5))
    expected = alpha_positive * 0.5  # w = sum alpha relu(g): the positive term only
    torch.testing.assert_close(weights, torch.tensor([[expected]]))


def test_integrative_cam_is_finite_on_the_image_that_was_nan():
    """The benchmark's zoo ResNet image that produced a NaN map before the fix above."""
    from ctc_plugin import IntegrativeCAM, zoo
    from ctc_plugin.datasets import ShapesDataset

    item = ShapesDataset("shapes", size=124, seed=2026)[123]
    maps = IntegrativeCAM(zoo.load("resnet", "shapes")).attribute(
        item["image"][None], target=int(item["label"])
    )
    assert torch.isfinite(maps).all()


@pytest.mark.parametrize("name", ["softplus", "sigmoid"])
def test_strong_evidence_keeps_a_positive_bounded_weight(name: str) -> None:
    """softplus and sigmoid at a confident score: the alpha's denominator reaches 0 where one
    channel adds about two to the score; the weight was 6e4 there and negative past it."""
    score = torch.tensor([20.0], dtype=torch.float64)
    terms = alpha_terms(BUILTIN_PHI[name], score)
    act = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    for evidence in (0.5, 1.9, 2.0, 2.1, 8.0):  # g * sum(A)
        grad = torch.full((1, 1, 1, 1), evidence, dtype=torch.float64)
        weight = float(channel_weights(grad, act, terms)[0, 0])
        assert 0 < weight <= 0.5 * evidence + 1e-12, (evidence, weight)


def test_the_sigmoid_at_a_score_of_zero_falls_back_to_grad_cam() -> None:
    """phi'' = 0 there: every alpha was 0 and the map silently all zero."""
    grad, act = torch.randn(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    terms = alpha_terms(BUILTIN_PHI["sigmoid"], torch.zeros(1))
    assert bool(terms.gradcam.all())
    torch.testing.assert_close(channel_weights(grad, act, terms), grad.mean(dim=(2, 3)))
