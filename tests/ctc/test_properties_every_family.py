"""The CTC properties every model must have, checked on random models of each family.

Families: ReLU CNNs (:class:`~ctc_plugin.testing.RandomCNN`), modern CNN parts
(:class:`~ctc_plugin.testing.RandomModernCNN`) and transformers
(:class:`~ctc_plugin.testing.RandomTransformer`). Properties: ``"proportional"`` scores add up to
the target logit; ``"none"`` is gradient x input of the network linearised at its gates; an
example's explanation does not depend on its batch, on the chunking of the features, or on the
features' labels.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin import CTC
from ctc_plugin.ctc.speedups import Speedups
from tests.strategies import cases

from .properties import (
    assert_chunks_change_nothing,
    assert_examples_independent_of_their_batch,
    assert_relabelling_permutes_scores,
    linearised_gradient_x_input,
    per_feature,
)
from .test_modern_gates import modern_cases
from .test_transformers import transformer_cases

FAMILIES = {"cnn": cases, "modern": modern_cases, "transformer": transformer_cases}
MODES = ["reference", "proportional", "none"]
SETTINGS = settings(max_examples=20, deadline=None)


def oracle_gradient_x_input(model, x, target):
    """Gradient x input of the model linearised at its gates (a ReLU CNN: autograd's own)."""
    if hasattr(model, "linearised"):
        return linearised_gradient_x_input(model, x, target)
    return InputXGradient(model).attribute(x.clone().requires_grad_(True), target=target).detach()


@pytest.mark.parametrize("family", FAMILIES)
@SETTINGS
@given(data=st.data(), with_baseline=st.booleans())
def test_proportional_scores_add_up_to_the_target_logit(family, data, with_baseline):
    model, x, mask, target = data.draw(FAMILIES[family]())
    # one baseline per example, each its own (negative ones too): not one row for the batch
    steps = torch.linspace(-0.3, 0.3, len(x), dtype=x.dtype).view(-1, 1, 1, 1)
    baselines = steps * torch.ones_like(x) if with_baseline else None
    _, scores = CTC(model, bias_sharing="proportional").attribute(
        x, target, feature_mask=mask, baselines=baselines, return_feature_scores=True
    )
    logits = model(x)[:, target].detach()
    total = scores.scores.sum(1) + (scores.baseline if with_baseline else 0)
    torch.testing.assert_close(total, logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(scores.output, logits)


@pytest.mark.parametrize("family", FAMILIES)
@SETTINGS
@given(data=st.data(), fast_path=st.booleans())
def test_none_is_gradient_x_input_of_the_network_linearised_at_its_gates(family, data, fast_path):
    model, x, mask, target = data.draw(FAMILIES[family]())
    ctc = CTC(model, bias_sharing="none")
    ctc._speedups = Speedups(gradient_shortcut=fast_path)  # the gated pass, or forward+backward
    _, scores = ctc.attribute(x, target, feature_mask=mask, return_feature_scores=True)
    expected = per_feature(oracle_gradient_x_input(model, x, target), mask, scores.ids)
    expected = expected.masked_fill(~scores.present, 0.0)
    torch.testing.assert_close(scores.scores, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
@SETTINGS
@given(data=st.data(), mode=st.sampled_from(MODES))
def test_an_example_does_not_depend_on_its_batch(family, data, mode):
    model, x, mask, target = data.draw(FAMILIES[family]())
    assert_examples_independent_of_their_batch(CTC(model, bias_sharing=mode), x, mask, target)


@pytest.mark.parametrize("family", FAMILIES)
@SETTINGS
@given(data=st.data(), mode=st.sampled_from(["reference", "none"]), per_eval=st.integers(1, 4))
def test_chunks_of_features_change_nothing(family, data, mode, per_eval):
    model, x, mask, target = data.draw(FAMILIES[family]())
    ctc = CTC(model, bias_sharing=mode)
    ctc._speedups = Speedups(gradient_shortcut=False)  # "none" through the gated pass, in chunks
    assert_chunks_change_nothing(ctc, x, mask, target, per_eval)


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=10, deadline=None)
@given(data=st.data(), mode=st.sampled_from(MODES), rng=st.randoms(use_true_random=False))
def test_relabelling_feature_ids_permutes_scores(family, data, mode, rng):
    model, x, mask, target = data.draw(FAMILIES[family]())
    assert_relabelling_permutes_scores(CTC(model, bias_sharing=mode), x, mask, target, rng)
