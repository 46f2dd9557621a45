"""BatchNorm scaling and rescale gates in place (``CTC.scale_in_place``): same results, and
safe when a model reads a BatchNorm's or an activation's input again or holds another view."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc import rules
from ctc_plugin.ctc.rules import sole_holder
from ctc_plugin.testing import ModernSpec, RandomModernCNN, random_partition

from .conftest import cases

MODES = ["reference", "proportional", "none"]


@contextmanager
def batch_norms_scaled_in_place():
    """Yield a list that collects, per pass, how many BatchNorms scaled their input in place."""
    counts: dict[int, int] = {}
    original = rules.GatedPass.fold_batch_norm

    def counting(self, x, scale, shift):
        out = original(self, x, scale, shift)
        counts[id(self)] = self.scaled_in_place
        return out

    rules.GatedPass.fold_batch_norm = counting
    collected: list[int] = []
    try:
        yield collected
    finally:
        rules.GatedPass.fold_batch_norm = original
        collected.extend(counts.values())


def _scores(model, x, mask, target, mode, in_place):
    ctc = CTC(model, bias_sharing=mode)
    ctc.gradient_fast_path = False  # the gated pass itself, also in "none" mode
    ctc.scale_in_place = in_place
    attribution, scores = ctc.attribute(
        x, target=target, feature_mask=mask, return_feature_scores=True
    )
    return ctc, attribution, scores


@settings(max_examples=25, deadline=None)
@given(cases(), st.sampled_from(MODES))
def test_scaling_in_place_gives_identical_results(case, mode):
    model, x, mask, target = case
    with batch_norms_scaled_in_place() as scaled:
        ctc, attribution, scores = _scores(model, x, mask, target, mode, in_place=True)
    _, expected, expected_scores = _scores(model, x, mask, target, mode, in_place=False)
    assert torch.equal(attribution, expected)  # the same arithmetic, bit for bit
    assert torch.equal(scores.scores, expected_scores.scores)
    spec = model.spec
    if spec.batch_norm and not spec.conv_bias:  # a bias-free convolution feeds each BatchNorm
        assert all(count > 0 for count in scaled) and scaled
    assert ctc.scale_in_place  # no model here reads a BatchNorm's input twice


class _ReadsItsConvolutionTwice(nn.Module):
    """``y = conv(x)`` is read again after ``bn(y)``: scaling ``y`` in place would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 2.0)
            self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = torch.relu(self.bn(y)) + y
        return self.head(z.mean(dim=(2, 3)))


class _HoldsAViewOfItsConvolution(_ReadsItsConvolutionTwice):
    """A view of ``y`` is taken before ``bn(y)`` and read after it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        first = y[:, :2]
        z = torch.relu(self.bn(y))
        return self.head(torch.cat([z[:, 2:], first], dim=1).mean(dim=(2, 3)))


@pytest.mark.parametrize("mode", MODES)
def test_a_model_reading_the_input_again_gets_the_pass_again(mode):
    model = _ReadsItsConvolutionTwice().eval().double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = random_partition(8, 8, 4)
    before = model(x)
    stack = torch._C._len_torch_function_stack()
    ctc, attribution, _ = _scores(model, x, mask, 1, mode, in_place=True)
    _, expected, _ = _scores(model, x, mask, 1, mode, in_place=False)
    assert torch.equal(attribution, expected)
    assert not ctc.scale_in_place  # this instance no longer tries
    assert torch.equal(model(x), before)
    assert torch._C._len_torch_function_stack() == stack


def test_a_view_taken_before_the_batch_norm_prevents_scaling_in_place():
    model = _HoldsAViewOfItsConvolution().eval().double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = random_partition(8, 8, 4)
    with batch_norms_scaled_in_place() as scaled:
        ctc, attribution, _ = _scores(model, x, mask, 0, "reference", in_place=True)
    _, expected, _ = _scores(model, x, mask, 0, "reference", in_place=False)
    assert torch.equal(attribution, expected)
    assert scaled == [0]  # the view shares y's memory: y was not scaled in place
    assert ctc.scale_in_place  # and nothing had to be run again


def test_sole_holder():
    fresh = torch.rand(2, 3)
    assert sole_holder(fresh)
    view = fresh[:1]
    assert not sole_holder(fresh) and not sole_holder(view)
    del view
    assert sole_holder(fresh)
    alias = fresh.detach()
    assert not sole_holder(fresh)
    del alias
    assert not sole_holder(torch.rand(2, requires_grad=True))


@pytest.mark.parametrize("activation", ["silu", "gelu", "hardswish"])
@pytest.mark.parametrize("mode", MODES)
def test_rescale_gates_in_place_give_identical_results(activation, mode, monkeypatch):
    spec = ModernSpec(norm="batch", activation=activation, squeeze="sigmoid", head_norm=True)
    model = RandomModernCNN(spec, seed=3).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = random_partition(8, 8, 5)
    overwritten = []
    take_over = rules.GatedPass._take_over

    def counting(self, tensor):
        overwritten.append(tuple(tensor.shape))
        return take_over(self, tensor)

    monkeypatch.setattr(rules.GatedPass, "_take_over", counting)
    ctc, attribution, scores = _scores(model, x, mask, 1, mode, in_place=True)
    assert len(overwritten) >= 2 * spec.blocks  # the blocks' activations at least
    _, expected, expected_scores = _scores(model, x, mask, 1, mode, in_place=False)
    assert torch.equal(attribution, expected)
    assert torch.equal(scores.scores, expected_scores.scores)
    assert ctc.scale_in_place


class _ReadsItsPreActivation(nn.Module):
    """``h`` is read again after ``silu(h)``: overwriting ``h`` in place would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.head((nn.functional.silu(h) + h).mean(dim=(2, 3)))


@pytest.mark.parametrize("mode", MODES)
def test_a_model_reading_a_pre_activation_again_gets_the_pass_again(mode):
    model = _ReadsItsPreActivation().eval().double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = random_partition(8, 8, 4)
    ctc, attribution, _ = _scores(model, x, mask, 2, mode, in_place=True)
    _, expected, _ = _scores(model, x, mask, 2, mode, in_place=False)
    assert torch.equal(attribution, expected)
    assert not ctc.scale_in_place
