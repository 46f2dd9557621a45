"""Rolling an image and its features over a circularly padded CNN leaves every score unchanged.

The models (`tests.strategies.CircularCNN`) are stride-1 convolutions padded circularly,
BatchNorm, ReLU, LeakyReLU or SiLU, an optional residual block and global average pooling before
a linear head. Rolling the input by whole pixels (``torch.roll`` over the image axes) rolls every
feature map before the pooling and changes nothing after it.

Why each mode's scores stay the same. The gate copy is rolled, so every gate (the ReLU pattern,
the LeakyReLU slope, SiLU's ``y / x``) is the rolled gate, and each feature copy
``(x - baseline) * M_k``, its mask rolled with the image, is the rolled copy: the network
linearised at the rolled image maps the rolled copy to the rolled maps. What remains is the share
of each bias, a function of the copies' values at a unit:

- ``"none"`` shares nothing: the scores are those of the linearised network, whose output does
  not depend on the roll.
- ``"proportional"`` gives copy ``k`` the share ``|z_k| / sum_j |z_j|`` of the bias at each unit,
  computed from the values at that unit only: the rolled unit takes the share the unit had.
- ``"reference"`` computes, per channel of a convolution or BatchNorm, means and standard
  deviations over the channel's positions (and over all units of the head): statistics of the
  set of values, which a roll permutes. Its rounding steps (``ceil(10 z)``) see the same values;
  the sums over positions add in another order, which in float64 moves a statistic by an ulp,
  not across a step (the tolerance below is float64 rounding).

So all three modes are tested. A zero-padded convolution would break this (a feature rolled
across the border meets zeros instead of the image's other side); so would a pooling with a
stride that the shift is not a multiple of, which is why these models have neither.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin import CTC
from tests.strategies import circular_cases

from .properties import TIGHT, per_example_baselines

MODES = ["reference", "proportional", "none"]


@settings(max_examples=30, deadline=None)
@given(data=st.data(), mode=st.sampled_from(MODES), with_baseline=st.booleans())
def test_rolling_the_image_and_its_features_leaves_every_score_unchanged(data, mode, with_baseline):
    model, x, mask, target = data.draw(circular_cases())
    size = x.shape[-1]
    shift = (data.draw(st.integers(0, size - 1)), data.draw(st.integers(1, size - 1)))
    if data.draw(st.booleans()):
        shift = shift[::-1]

    def roll(tensor: torch.Tensor) -> torch.Tensor:
        return torch.roll(tensor, shift, dims=(-2, -1))

    baselines = per_example_baselines(x, size, -0.2, 0.2) if with_baseline else None
    ctc = CTC(model, bias_sharing=mode)
    attr, scores = ctc.attribute(
        x, target, feature_mask=mask, baselines=baselines, return_feature_scores=True
    )
    rolled_attr, rolled = ctc.attribute(
        roll(x),
        target,
        feature_mask=roll(mask),
        baselines=None if baselines is None else roll(baselines),
        return_feature_scores=True,
    )
    torch.testing.assert_close(model(roll(x)), model(x), **TIGHT)  # the premise
    torch.testing.assert_close(rolled.output, scores.output, **TIGHT)
    torch.testing.assert_close(rolled.scores, scores.scores, **TIGHT)
    torch.testing.assert_close(rolled_attr, roll(attr), **TIGHT)
    if with_baseline:
        torch.testing.assert_close(rolled.baseline, scores.baseline, **TIGHT)
