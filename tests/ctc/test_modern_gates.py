"""CTC through modern CNN parts: squeeze-excitation gates, normalisation statistics, layer scale.

The networks (:class:`~ctc_plugin.testing.RandomModernCNN`) combine inverted residuals,
squeeze-excitation (module or ``x * torch.sigmoid(x)`` by hand), BatchNorm, LayerNorm,
GroupNorm, InstanceNorm or RMSNorm (modules or functional calls), SiLU/GELU/Hardswish and layer
scale. The oracle for ``"none"`` is the model's own plain-torch linearisation at its gates.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin import CTC
from ctc_plugin.ctc.attributor import CTCAttributor
from ctc_plugin.ctc.composite import CTCComposite
from ctc_plugin.ctc.errors import UnsupportedOperationError
from ctc_plugin.testing import ModernSpec, RandomModernCNN, random_partition

from .properties import (
    assert_chunks_change_nothing,
    assert_examples_independent_of_their_batch,
    assert_relabelling_permutes_scores,
    draw_case,
)

MODES = ["reference", "proportional", "none"]
SETTINGS = settings(max_examples=20, deadline=None)


@st.composite
def modern_specs(draw: st.DrawFn) -> ModernSpec:
    """Random small modern architectures."""
    return ModernSpec(
        width=draw(st.integers(2, 4)),
        expansion=draw(st.integers(1, 2)),
        blocks=draw(st.integers(1, 2)),
        norm=draw(st.sampled_from(["batch", "layer", "group", "instance", "rms"])),
        activation=draw(st.sampled_from(["silu", "gelu", "hardswish", "relu", "swish-by-hand"])),
        squeeze=draw(st.sampled_from(["none", "sigmoid", "hardsigmoid"])),
        layer_scale=draw(st.booleans()),
        functional=draw(st.booleans()),
        head_norm=draw(st.booleans()),
    )


@st.composite
def modern_cases(draw: st.DrawFn, dtype: torch.dtype = torch.float64):
    """(model, inputs, feature_mask, target) with a random modern net, batch and partition."""
    spec = draw(modern_specs())
    return draw_case(draw, lambda seed, size: RandomModernCNN(spec, seed=seed), spec.classes, dtype)


def per_feature(values: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(N, K) sums of per-element values over each feature."""
    mask = mask.expand(values.shape)
    return torch.stack([(values * (mask == i)).flatten(1).sum(1) for i in ids.tolist()], 1)


def linearised_gradient_x_input(model, x, target):
    """Gradient x input of the model's plain-torch linearisation at its gates (the oracle)."""
    leaf = x.clone().requires_grad_(True)
    with model.linearised():
        (gradient,) = torch.autograd.grad(model(leaf)[:, target].sum(), leaf)
    return gradient * x


@SETTINGS
@given(modern_cases(), st.booleans())
def test_proportional_scores_add_up_to_the_target_logit(case, with_baseline):
    model, x, mask, target = case
    baselines = 0.2 * torch.ones_like(x[:1]) if with_baseline else None
    _, scores = CTC(model, bias_sharing="proportional").attribute(
        x, target, feature_mask=mask, baselines=baselines, return_feature_scores=True
    )
    logits = model(x)[:, target].detach()
    total = scores.scores.sum(1) + (scores.baseline if with_baseline else 0)
    torch.testing.assert_close(total, logits, rtol=1e-9, atol=1e-9)


@SETTINGS
@given(modern_cases(), st.booleans())
def test_none_is_gradient_x_input_of_the_network_linearised_at_its_gates(case, fast_path):
    model, x, mask, target = case
    ctc = CTC(model, bias_sharing="none")
    ctc.gradient_fast_path = fast_path  # the gated pass itself, or one forward and backward
    _, scores = ctc.attribute(x, target, feature_mask=mask, return_feature_scores=True)
    expected = per_feature(linearised_gradient_x_input(model, x, target), mask, scores.ids)
    expected = expected.masked_fill(~scores.present, 0.0)
    torch.testing.assert_close(scores.scores, expected, rtol=1e-9, atol=1e-10)


def test_the_linearised_oracle_is_not_the_plain_gradient():
    """On these parts, linearising at the gates differs from autograd: the test above can fail."""
    spec = ModernSpec(norm="layer", activation="gelu", squeeze="sigmoid", head_norm=True)
    model = RandomModernCNN(spec, seed=4).double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    linear = linearised_gradient_x_input(model, x, 0)
    plain = InputXGradient(model).attribute(x.clone().requires_grad_(True), target=0)
    assert (linear - plain).abs().max() > 1e-3 * linear.abs().max()


@SETTINGS
@given(modern_cases(), st.sampled_from(MODES))
def test_an_example_does_not_depend_on_its_batch(case, mode):
    model, x, mask, target = case
    assert_examples_independent_of_their_batch(CTC(model, bias_sharing=mode), x, mask, target)


@SETTINGS
@given(modern_cases(), st.sampled_from(["reference", "none"]), st.integers(1, 4))
def test_chunks_of_features_change_nothing(case, mode, per_eval):
    model, x, mask, target = case
    ctc = CTC(model, bias_sharing=mode)
    ctc.gradient_fast_path = False  # "none" through the gated pass itself, in chunks
    assert_chunks_change_nothing(ctc, x, mask, target, per_eval)


@SETTINGS
@given(modern_cases(), st.sampled_from(MODES), st.randoms(use_true_random=False))
def test_relabelling_feature_ids_permutes_scores(case, mode, rng):
    model, x, mask, target = case
    assert_relabelling_permutes_scores(CTC(model, bias_sharing=mode), x, mask, target, rng)


@settings(max_examples=15, deadline=None)
@given(modern_cases(), st.sampled_from(MODES), st.sampled_from(["intercept", "raise"]))
def test_zennit_attributor_equals_the_captum_class(case, mode, functional):
    model, x, mask, target = case
    expected = CTC(model, bias_sharing=mode).attribute(x, target, feature_mask=mask)
    one_hot = torch.eye(model.spec.classes, dtype=x.dtype)[[target]]
    attributor = CTCAttributor(
        model, CTCComposite(bias_sharing=mode), feature_mask=mask, functional=functional
    )
    try:
        with attributor:
            output, relevance = attributor(x, one_hot)
    except UnsupportedOperationError as error:
        # the squeeze-excitation product, a permute-wrapped or functional normalisation and
        # activations by hand run outside every hooked module: only "intercept" applies rules
        assert functional == "raise"
        assert "outside every module with a CTC hook" in str(error)
        return
    torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(output, model(x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_float32_agrees_with_float64(mode):
    spec = ModernSpec(norm="group", activation="silu", squeeze="hardsigmoid", head_norm=True)
    model = RandomModernCNN(spec, seed=5).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = random_partition(8, 8, 5)
    a64 = CTC(model, bias_sharing=mode).attribute(x, 1, feature_mask=mask)
    a32 = CTC(model.float(), bias_sharing=mode).attribute(x.float(), 1, feature_mask=mask)
    scale = a64.abs().max()
    atol = 2e-3 if mode == "reference" else 1e-4  # reference quantises: ceil may flip
    torch.testing.assert_close(a32.double() / scale, a64 / scale, rtol=0, atol=atol)


def test_stochastic_depth_in_training_mode_is_refused_and_the_model_is_untouched():
    model = RandomModernCNN(ModernSpec(), seed=1)
    model.blocks[0].drop_path.train()
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(UnsupportedOperationError, match=r"random numbers.*model.eval\(\)"):
        CTC(model).attribute(x, 0, feature_mask=random_partition(8, 8, 3))
    assert torch._C._len_torch_function_stack() == 0
