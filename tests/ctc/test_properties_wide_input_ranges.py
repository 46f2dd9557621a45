"""The CTC properties hold for inputs outside [0, 1]: normalised images and large magnitudes.

The strategies draw images in [0, 1]; a model often takes normalised ones (about [-2, 2.5] after
ImageNet's mean and std), and nothing in the definitions bounds the values. Here the drawn
images and their per-example baselines are mapped to such ranges and to magnitudes of 1e3, and
``"proportional"`` scores still add up to the target logit (with the baseline's share),
``"none"`` is still the linearised network's gradient times ``x - baseline``, and an example's
``"reference"`` scores still do not depend on its batch. The tolerances are float64 rounding
relative to the magnitude of what is summed.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin import CTC
from ctc_plugin.ctc.speedups import Speedups
from tests.strategies import cases, modern_cases, transformer_cases

from .properties import (
    assert_examples_independent_of_their_batch,
    linearised_gradient,
    per_example_baselines,
    per_feature,
)

FAMILIES = {"cnn": cases, "modern": modern_cases, "transformer": transformer_cases}
#: Maps of [0, 1] onto wider ranges: (scale, offset), ``x * scale + offset``.
RANGES = {
    "imagenet-normalised": (1 / 0.226, -0.449 / 0.226),
    "[-3, 3]": (6.0, -3.0),
    "[0, 1e3]": (1e3, 0.0),
    "[-1e3, 1e3]": (2e3, -1e3),
}
#: Float64 rounding, relative to the magnitude of the terms summed.
RELATIVE = 1e-9
SETTINGS = settings(max_examples=8, deadline=None)


def draw_wide_case(data: st.DataObject, family: str):
    """(model, x, baselines, mask, target, scale): a family's case with x and baselines mapped."""
    model, x, mask, target = data.draw(FAMILIES[family]())
    scale, offset = RANGES[data.draw(st.sampled_from(sorted(RANGES)))]
    baselines = per_example_baselines(x, data.draw(st.integers(0, 1000)), 0.0, 1.0)
    return model, x * scale + offset, baselines * scale + offset, mask, target, abs(scale)


def assert_close_relative(actual, expected, magnitude) -> None:
    """``actual`` equals ``expected`` to `RELATIVE` times ``magnitude`` (per example)."""
    error = (actual - expected).abs().reshape(len(actual), -1).amax(1)
    bound = RELATIVE * magnitude.reshape(len(actual), -1).amax(1)
    assert (error <= bound).all(), f"off by {error.tolist()}, allowed {bound.tolist()}"


@pytest.mark.parametrize("family", FAMILIES)
@SETTINGS
@given(data=st.data(), with_baseline=st.booleans())
def test_proportional_scores_add_up_to_the_target_logit(family, data, with_baseline):
    model, x, baselines, mask, target, _ = draw_wide_case(data, family)
    baselines = baselines if with_baseline else None
    _, scores = CTC(model, bias_sharing="proportional").attribute(
        x, target, feature_mask=mask, baselines=baselines, return_feature_scores=True
    )
    logits = model(x)[:, target].detach()
    share = scores.baseline if with_baseline else torch.zeros_like(logits)
    total = scores.scores.sum(1) + share
    magnitude = scores.scores.abs().sum(1) + share.abs() + logits.abs()
    assert_close_relative(total, logits, magnitude)
    torch.testing.assert_close(scores.output, logits)


@pytest.mark.parametrize("family", FAMILIES)
@SETTINGS
@given(data=st.data(), fast_path=st.booleans())
def test_none_is_the_linearised_gradient_times_x_minus_baseline(family, data, fast_path):
    model, x, baselines, mask, target, _ = draw_wide_case(data, family)
    ctc = CTC(model, bias_sharing="none")
    ctc._speedups = Speedups(gradient_shortcut=fast_path)
    _, scores = ctc.attribute(
        x, target, feature_mask=mask, baselines=baselines, return_feature_scores=True
    )
    gradient = linearised_gradient(model, x, [target] * len(x))
    terms = gradient * (x - baselines)
    expected = per_feature(terms, mask, scores.ids).masked_fill(~scores.present, 0.0)
    magnitude = per_feature(terms.abs(), mask, scores.ids)
    assert_close_relative(scores.scores, expected, magnitude)


@pytest.mark.parametrize("family", FAMILIES)
@SETTINGS
@given(data=st.data())
def test_reference_examples_do_not_depend_on_their_batch(family, data):
    model, x, _, mask, target, _ = draw_wide_case(data, family)
    assert_examples_independent_of_their_batch(
        CTC(model, bias_sharing="reference"), x, mask, target
    )
