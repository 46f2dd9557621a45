"""plot_segment_scores reads a feature mask given per channel as the one map it is.

Captum's feature masks broadcast to the input, so a mask is often kept as (1, 3, H, W), the
same segment ids in every channel. Its channels were summed as a map's are: segment k became
segment 3k, so a score of id 3 was painted on segment 1 (and the scores of ids 1 and 2 were
called 'not in the feature mask').
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctc_plugin.viz import plot_segment_scores

H, W = 8, 12
SEGMENTS = torch.zeros(H, W, dtype=torch.long)
SEGMENTS[:, 4:8] = 1
SEGMENTS[:, 8:] = 2
SCORES = {0: 1.0, 1: -2.0, 2: 0.5}


def _painted(figure) -> np.ndarray:
    return np.asarray(figure.axes[1].images[1].get_array().filled(np.nan))


@pytest.mark.parametrize("shape", [(3, H, W), (1, 3, H, W)])
def test_a_mask_repeated_in_every_channel_is_read_as_one_mask(shape):
    given = SEGMENTS.expand(shape)
    figure = plot_segment_scores(torch.rand(3, H, W), given, {"CTC": SCORES})
    expected = plot_segment_scores(torch.rand(3, H, W), SEGMENTS, {"CTC": SCORES})
    np.testing.assert_array_equal(_painted(figure), _painted(expected))
    assert figure.axes[1].get_xlabel() == ""  # every segment has its score


def test_masks_that_differ_by_channel_are_refused_saying_to_pass_one():
    per_channel = torch.stack([SEGMENTS, SEGMENTS, SEGMENTS.flip(1)])
    with pytest.raises(ValueError, match=r"feature_mask holds 3 channels that differ.*\[0\]"):
        plot_segment_scores(torch.rand(3, H, W), per_channel, {"CTC": SCORES})
