"""Permuting a batch permutes its explanation, in every sharing mode and every model family.

The images of a batch, with their per-example feature masks, baselines and targets, are put in
another order: the scores, the baselines' shares, the target outputs and the attributions come
in that order, and nothing else changes (to float64 rounding). Each example is explained as if it
were alone (`assert_examples_independent_of_their_batch`), but that property keeps the batch's
order; this one catches an example that takes another example's baseline, target or mask.
"""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ctc_plugin import CTC
from tests.strategies import cases, modern_cases, transformer_cases

from .properties import TIGHT, per_example_baselines, per_example_targets

FAMILIES = {"cnn": cases, "modern": modern_cases, "transformer": transformer_cases}
MODES = ["reference", "proportional", "none"]


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=12, deadline=None)
@given(
    data=st.data(),
    mode=st.sampled_from(MODES),
    with_baseline=st.booleans(),
    rng=st.randoms(use_true_random=False),
)
def test_permuting_the_batch_permutes_scores_and_attributions(
    family, data, mode, with_baseline, rng: random.Random
):
    model, x, mask, target = data.draw(FAMILIES[family]())
    n = x.shape[0]
    assume(n > 1)
    classes = model(x).shape[1]
    targets = torch.tensor(per_example_targets(target, classes, n))
    baselines = per_example_baselines(x, n, -0.3, 0.3) if with_baseline else None
    order = torch.tensor(rng.sample(range(n), n))
    if torch.equal(order, torch.arange(n)):
        order = order.flip(0)  # another order than the batch's
    ctc = CTC(model, bias_sharing=mode)
    attr, scores = ctc.attribute(
        x, targets, feature_mask=mask, baselines=baselines, return_feature_scores=True
    )
    attr2, scores2 = ctc.attribute(
        x[order],
        targets[order],
        feature_mask=mask[order] if mask.shape[0] > 1 else mask,
        baselines=None if baselines is None else baselines[order],
        return_feature_scores=True,
    )
    torch.testing.assert_close(attr2, attr[order], **TIGHT)
    torch.testing.assert_close(scores2.scores, scores.scores[order], **TIGHT)
    torch.testing.assert_close(scores2.output, scores.output[order], **TIGHT)
    assert torch.equal(scores2.ids, scores.ids)
    assert torch.equal(scores2.present, scores.present[order])
    assert torch.equal(scores2.target, scores.target[order])
    if with_baseline:
        torch.testing.assert_close(scores2.baseline, scores.baseline[order], **TIGHT)
