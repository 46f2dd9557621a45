"""The Zennit route scores as the Captum class when each example weights the output its own way.

`CTCAttributor`'s ``attr_output`` weights the outputs (Zennit's convention): a feature's score is
``sum_c w[n, c] * f_c(copy of the feature)``, with ``"reference"`` sharing rescaled by the
weighted output over the weighted reference full copy's. So, with one weighting row per example:

- a one-hot row times a factor ``a_n`` (negative ones too) gives ``a_n`` times the scores of
  ``CTC(model).attribute(x, target=classes)`` in every mode: the factor multiplies the copy's
  weighted output, and in ``"reference"`` it cancels in the rescaling ratio and multiplies the
  output it rescales to;
- any real row gives ``sum_c w[n, c]`` times the class-``c`` scores in ``"none"`` and
  ``"proportional"`` sharing, whose shares do not depend on the output (``"reference"``'s
  rescaling is not linear in the weighting, as `CTCAttributor` says).

The baselines' shares follow the same sums.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin import CTC, CTCAttributor, CTCComposite
from tests.strategies import cases, modern_cases, transformer_cases

from .properties import per_example_baselines, per_example_targets

FAMILIES = {"cnn": cases, "modern": modern_cases, "transformer": transformer_cases}
MODES = ["reference", "proportional", "none"]
TOL = {"rtol": 1e-9, "atol": 1e-10}


def captum_scores(model, x, mask, baselines, mode, target):
    """The Captum class's attributions and `FeatureScores` for ``target``."""
    return CTC(model, bias_sharing=mode).attribute(
        x, target, feature_mask=mask, baselines=baselines, return_feature_scores=True
    )


def zennit_scores(model, x, mask, baselines, mode, weighting):
    """The attributor's output, relevance and `FeatureScores` for the ``weighting`` rows."""
    attributor = CTCAttributor(
        model, CTCComposite(bias_sharing=mode), feature_mask=mask, baselines=baselines
    )
    output, relevance = attributor(x, weighting)
    return output, relevance, attributor.feature_scores


def draw_inputs(data: st.DataObject, family: str):
    """(model, x, mask, target, classes, baselines or None) of a family's case."""
    model, x, mask, target = data.draw(FAMILIES[family]())
    with_baseline = data.draw(st.booleans())
    baselines = per_example_baselines(x, target, -0.3, 0.3) if with_baseline else None
    return model, x, mask, target, model(x).shape[1], baselines


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=10, deadline=None)
@given(data=st.data(), mode=st.sampled_from(MODES))
def test_a_scaled_class_per_example_scores_as_the_captum_class(family, data, mode):
    model, x, mask, target, classes, baselines = draw_inputs(data, family)
    n = x.shape[0]
    targets = torch.tensor(per_example_targets(target, classes, n))
    factors = torch.tensor(
        data.draw(st.lists(st.sampled_from([1.0, 2.5, -1.0, -0.5]), min_size=n, max_size=n)),
        dtype=x.dtype,
    )
    weighting = torch.eye(classes, dtype=x.dtype)[targets] * factors.view(-1, 1)
    output, relevance, scores = zennit_scores(model, x, mask, baselines, mode, weighting)
    attr, expected = captum_scores(model, x, mask, baselines, mode, targets)
    column = factors.view(-1, 1)
    torch.testing.assert_close(output, model(x), **TOL)
    torch.testing.assert_close(relevance, attr * factors.view(-1, *[1] * (x.dim() - 1)), **TOL)
    torch.testing.assert_close(scores.scores, expected.scores * column, **TOL)
    torch.testing.assert_close(scores.output, expected.output * factors, **TOL)
    positive = factors > 0
    assert torch.equal(scores.target[positive], targets[positive])
    if baselines is not None:
        torch.testing.assert_close(scores.baseline, expected.baseline * factors, **TOL)


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=6, deadline=None)
@given(data=st.data(), mode=st.sampled_from(["proportional", "none"]), seed=st.integers(0, 100))
def test_any_weighting_per_example_is_the_weighted_sum_of_class_scores(family, data, mode, seed):
    model, x, mask, _, classes, baselines = draw_inputs(data, family)
    generator = torch.Generator().manual_seed(seed)
    weighting = torch.rand(x.shape[0], classes, generator=generator, dtype=x.dtype) * 4 - 2
    output, relevance, scores = zennit_scores(model, x, mask, baselines, mode, weighting)
    per_class = [captum_scores(model, x, mask, baselines, mode, c) for c in range(classes)]
    expected = sum(weighting[:, c : c + 1] * per_class[c][1].scores for c in range(classes))
    torch.testing.assert_close(output, model(x), **TOL)
    torch.testing.assert_close(scores.scores, expected, **TOL)
    weighted_output = (weighting * model(x)).sum(1)
    torch.testing.assert_close(scores.output, weighted_output, **TOL)
    if baselines is not None:
        share = sum(weighting[:, c] * per_class[c][1].baseline for c in range(classes))
        torch.testing.assert_close(scores.baseline, share, **TOL)
