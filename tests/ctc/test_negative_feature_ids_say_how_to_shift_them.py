"""Negative feature ids are refused with the smallest id and the line that shifts them.

The message said only that ids must be >= 0. Captum's FeatureAblation takes negative ids, so a
mask made for it (ids from -1 for "background") reaches CTC as it is; the error now names the
smallest id and gives ``mask - mask.min()``, which keeps every feature and its pixels.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin import CTC
from ctc_plugin.testing import RandomCNN, random_partition


def test_negative_ids_are_refused_with_the_shift_that_keeps_the_features():
    model, images = RandomCNN(seed=0), torch.rand(2, 3, 8, 8)
    mask = random_partition(8, 8, 4) - 4  # ids -3, 0, 3, 6
    with pytest.raises(
        ValueError, match=r"negative ids \(the smallest is -3\).*mask - mask\.min\(\)"
    ):
        CTC(model).attribute(images, 1, feature_mask=mask)
    shifted = CTC(model).attribute(images, 1, feature_mask=mask - mask.min())
    assert torch.equal(shifted, CTC(model).attribute(images, 1, feature_mask=mask + 3))
