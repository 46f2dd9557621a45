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

from ctc_plugin import CTC, TrainingModeError
from ctc_plugin.ctc.attributor import CTCAttributor
from ctc_plugin.ctc.composite import CTCComposite
from ctc_plugin.ctc.errors import UnsupportedOperationError
from ctc_plugin.testing import ModernSpec, RandomModernCNN, random_partition
from tests.strategies import modern_cases

from .properties import (
    linearised_gradient_x_input,
)

MODES = ["reference", "proportional", "none"]
SETTINGS = settings(max_examples=20, deadline=None)


def test_the_linearised_oracle_is_not_the_plain_gradient():
    """On these parts, linearising at the gates differs from autograd: the test above can fail."""
    spec = ModernSpec(norm="layer", activation="gelu", squeeze="sigmoid", head_norm=True)
    model = RandomModernCNN(spec, seed=4).double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    linear = linearised_gradient_x_input(model, x, 0)
    plain = InputXGradient(model).attribute(x.clone().requires_grad_(True), target=0)
    assert (linear - plain).abs().max() > 1e-3 * linear.abs().max()


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
    # refused by name before the model runs, as dropout is
    with pytest.raises(TrainingModeError, match=r"StochasticDepth .* is in training mode"):
        CTC(model).attribute(x, 0, feature_mask=random_partition(8, 8, 3))
    assert torch._C._len_torch_function_stack() == 0
