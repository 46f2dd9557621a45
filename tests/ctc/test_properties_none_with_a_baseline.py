"""``"none"`` with a baseline against its definition, on every model family.

The docs ("How CTC works") define ``"none"`` as the CTC pass with no bias shared: copy ``k`` is
``(x - baseline) * M_k`` propagated through the network linearised at the gates of ``x``, so its
score is that network's gradient at ``x`` times ``x - baseline``, summed over the feature; the
baseline's copy, the baseline through the same network, is reported as the baseline's share:
the gradient times the baseline, summed over the input. The oracle below computes that with
autograd on the model's own plain-torch linearisation
(:func:`~tests.ctc.properties.linearised_gradient`), for the gradient shortcut and for the pass
of copies, with baselines of every form ``attribute`` takes (a number, one row for the batch,
one per example).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin import CTC
from ctc_plugin.ctc.speedups import Speedups
from tests.strategies import cases, modern_cases, transformer_cases

from .properties import linearised_gradient, per_example_baselines, per_example_targets, per_feature

FAMILIES = {"cnn": cases, "modern": modern_cases, "transformer": transformer_cases}


def draw_baselines(data: st.DataObject, x: torch.Tensor) -> float | torch.Tensor:
    """A nonzero baseline: a number, one image for the whole batch, or one per example."""
    form = data.draw(st.sampled_from(["number", "one row", "per example"]))
    if form == "number":
        return data.draw(st.sampled_from([-0.5, 0.25, 1.0]))
    seed = data.draw(st.integers(0, 1000))
    baselines = per_example_baselines(x, seed, -0.5, 0.5)
    return baselines[:1] if form == "one row" else baselines


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=12, deadline=None)
@given(data=st.data(), fast_path=st.booleans())
def test_none_with_a_baseline_is_the_linearised_gradient_times_x_minus_baseline(
    family, data, fast_path
):
    model, x, mask, target = data.draw(FAMILIES[family]())
    targets = per_example_targets(target, model(x).shape[1], x.shape[0])
    baselines = draw_baselines(data, x)
    ctc = CTC(model, bias_sharing="none")
    ctc._speedups = Speedups(gradient_shortcut=fast_path)  # the gradient, or the copies' pass
    _, scores = ctc.attribute(
        x, targets, feature_mask=mask, baselines=baselines, return_feature_scores=True
    )
    gradient = linearised_gradient(model, x, targets)
    baseline = torch.as_tensor(baselines, dtype=x.dtype).expand_as(x)
    expected = per_feature(gradient * (x - baseline), mask, scores.ids)
    expected = expected.masked_fill(~scores.present, 0.0)
    torch.testing.assert_close(scores.scores, expected, rtol=1e-9, atol=1e-10)
    expected_share = (gradient * baseline).flatten(1).sum(1)
    torch.testing.assert_close(scores.baseline, expected_share, rtol=1e-9, atol=1e-10)
