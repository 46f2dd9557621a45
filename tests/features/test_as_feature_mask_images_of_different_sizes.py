"""as_feature_mask on one entry per image: images of different sizes are a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctc_plugin.features import as_feature_mask


@pytest.mark.parametrize(
    "masks",
    [
        [np.zeros((4, 6), dtype=np.int64), np.zeros((4, 6), dtype=np.int64), np.ones((5, 6), int)],
        [np.zeros((2, 4, 6), dtype=bool), np.zeros((2, 4, 7), dtype=bool)],
        [torch.zeros(4, 6, dtype=torch.long), [{"segmentation": np.ones((3, 3), dtype=bool)}]],
    ],
)
def test_images_whose_masks_differ_in_size_are_named(masks):
    with pytest.raises(ValueError, match=r"differ in size: image 0's are \(4, 6\), image \d's"):
        as_feature_mask(masks)


def test_images_of_one_size_still_stack():
    masks = [np.arange(24).reshape(4, 6), np.zeros((2, 4, 6), dtype=bool)]
    result = as_feature_mask(masks)
    assert result.shape == (2, 1, 4, 6) and result.dtype == torch.int64
