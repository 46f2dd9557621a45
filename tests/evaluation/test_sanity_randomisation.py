import math

import numpy as np
import pytest
import torch
from captum.attr import Saliency
from scipy import stats
from torch import nn

from ctc_plugin.evaluation.sanity import cascading_randomisation, parameter_layers, rank_correlation


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    ).eval()


def edge_method(model, images, targets, feature_mask):
    """Ignores the model: an edge detector."""
    diff = (images[..., 1:, :] - images[..., :-1, :]).abs().sum(1, keepdim=True)
    return torch.nn.functional.pad(diff, (0, 0, 0, 1))


def input_method(model, images, targets, feature_mask):
    return images.sum(1, keepdim=True)


def saliency(model, images, targets, feature_mask):
    return (
        Saliency(model)
        .attribute(images.clone().requires_grad_(), target=targets)
        .sum(1, keepdim=True)
    )


def test_layers_in_call_order():
    assert parameter_layers(tiny_model(), torch.rand(1, 3, 6, 6)) == ["0", "2", "5"]


def test_model_independent_method_stays_correlated():
    model, x = tiny_model(), torch.rand(2, 3, 6, 6)
    steps = cascading_randomisation(input_method, model, x)
    assert [s.layer for s in steps] == ["5", "2", "0"]
    for step in steps:
        assert torch.allclose(step.correlation, torch.ones(2, dtype=torch.float64))


def test_gradient_decorrelates_and_model_is_untouched():
    model, x = tiny_model(), torch.rand(2, 3, 6, 6)
    before = [p.clone() for p in model.parameters()]
    steps = cascading_randomisation(saliency, model, x, max_steps=2)
    assert len(steps) == 2 and steps[-1].layer == "0"
    assert (steps[-1].correlation < 0.9).all()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_rank_correlation_matches_scipy_and_constant_is_nan():
    a, b = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    ours = rank_correlation(a, b, absolute=False)
    expected = stats.spearmanr(a[1].ravel().numpy(), b[1].ravel().numpy()).statistic
    assert ours[1].item() == pytest.approx(expected)
    assert math.isnan(rank_correlation(torch.ones(1, 1, 2, 2), a[:1, :, :2, :2])[0].item())
    assert np.isfinite(ours[0].item())


def test_a_single_step_is_the_fully_randomised_model():
    """``max_steps=1`` (the benchmark's setting) explains after the last step, where every
    layer is random, not after the first (only the head random)."""
    seen = []

    def method(model, images, targets, feature_mask):
        seen.append(model)
        return images.sum(1, keepdim=True)

    model = tiny_model()
    steps = cascading_randomisation(method, model, torch.rand(2, 3, 6, 6), max_steps=1)
    assert [s.layer for s in steps] == ["0"]
    last = dict(seen[-1].named_parameters())
    assert not any(torch.equal(p, last[n]) for n, p in model.named_parameters())


class Attending(nn.Module):
    """Parameters that no ``reset_parameters`` of a called module reaches: a class token,
    position embeddings, a layer scale, and ``nn.MultiheadAttention`` (whose ``out_proj`` it
    reads without calling it)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 4, 2, 2)
        self.token = nn.Parameter(torch.randn(1, 1, 4))
        self.position = nn.Parameter(torch.randn(1, 10, 4))
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.scale = nn.Parameter(torch.rand(4) + 0.5)
        self.head = nn.Linear(4, 3)
        with torch.no_grad():  # "trained": no parameter keeps its initial value (zero biases)
            for parameter in self.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.token.expand(len(x), -1, -1), tokens], 1) + self.position
        tokens = tokens + self.scale * self.attention(tokens, tokens, tokens)[0]
        return self.head(tokens[:, 0])


def test_every_parameter_is_random_after_the_last_step():
    seen = []

    def method(model, images, targets, feature_mask):
        seen.append(model)
        return images.sum(1, keepdim=True)

    model, x = Attending().eval(), torch.rand(2, 3, 6, 6)
    before = {n: p.clone() for n, p in model.named_parameters()}
    steps = cascading_randomisation(method, model, x, max_steps=1)
    last = dict(seen[-1].named_parameters())
    kept = [n for n, p in model.named_parameters() if torch.equal(p, last[n])]
    assert kept == [], f"left trained by the cascade: {kept}"
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # a copy
    # the cascade runs from the head down; the token and position embeddings, held by the
    # model itself (called first), are randomised last
    assert parameter_layers(model, x) == ["", "embed", "attention", "head"]
    assert steps[-1].layer == ""


class _ScaledHead(nn.Module):
    """A learned scalar temperature and a layer scale whose values are all equal."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.temperature = nn.Parameter(torch.tensor(2.5))
        self.gamma = nn.Parameter(torch.full((2,), 0.1))
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        features = (self.conv(x) * self.gamma.view(1, -1, 1, 1)).mean((2, 3))
        return self.head(features) / self.temperature


def test_parameters_without_spread_are_random_after_the_last_step_too():
    """``randn * std + mean`` left a scalar (std 0) and equal values exactly as trained."""
    seen = []

    def method(model, images, targets, feature_mask):
        seen.append(model)
        return images.sum(1, keepdim=True)

    model = _ScaledHead().eval()
    cascading_randomisation(method, model, torch.rand(2, 3, 6, 6), max_steps=1)
    last = seen[-1]
    assert not torch.equal(last.temperature, model.temperature)
    assert not torch.equal(last.gamma, model.gamma)


def test_max_steps_is_checked_before_anything_is_explained():
    calls = []

    def method(model, images, targets, feature_mask):
        calls.append(1)
        return images.sum(1, keepdim=True)

    with pytest.raises(ValueError, match="max_steps must be an integer of at least 1, got 0"):
        cascading_randomisation(method, _ScaledHead().eval(), torch.rand(1, 3, 6, 6), max_steps=0)
    assert calls == []


class _GainConv(nn.Conv2d):
    """A convolution with a learned gain that its inherited ``reset_parameters`` leaves alone."""

    def __init__(self) -> None:
        super().__init__(3, 4, 3, padding=1)
        self.gain = nn.Parameter(torch.tensor(1.7))

    def forward(self, x):
        return super().forward(x) * self.gain


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm", "gain"])
def test_parameters_that_reset_parameters_does_not_write_are_random_too(wrap):
    """The hook-based weight and spectral norm compute ``weight`` from ``weight_g``/``weight_v``
    or ``weight_orig`` at every forward: ``reset_parameters`` wrote the derived weight, and the
    "fully randomised" model kept its trained weights (rho 0.887 against 0.005)."""
    torch.manual_seed(0)
    if wrap == "gain":
        first = _GainConv()
    else:
        first = getattr(nn.utils, wrap)(nn.Conv2d(3, 4, 3, padding=1))
    model = nn.Sequential(first, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    seen = []

    def method(model, images, targets, feature_mask):
        seen.append(model)
        return images.sum(1, keepdim=True)

    cascading_randomisation(method, model, torch.rand(2, 3, 6, 6), max_steps=1)
    last = dict(seen[-1].named_parameters())
    kept = [n for n, p in model.named_parameters() if torch.equal(p, last[n])]
    assert kept == [], f"left trained by the cascade: {kept}"


@pytest.mark.parametrize("other", [(2, 1, 4, 4), (3, 1, 4, 5)])
def test_rank_correlation_of_maps_of_other_shapes_is_refused(other):
    """Three maps against two gave two correlations (zip dropped the third) instead of an error."""
    with pytest.raises(ValueError, match=r"same shape.*\(3, 1, 4, 4\)") as refused:
        rank_correlation(torch.rand(3, 1, 4, 4), torch.rand(*other))
    assert "same images" in str(refused.value)  # what to do: one map per image, in both
