"""segment_means reads a float feature mask only where it holds whole numbers.

A float mask was cast to int64, truncating its fractions: a pixel of id 0.5 (a label map
resized with bilinear interpolation) counted in segment 0, and the means of both segments it
lay between were wrong without a word. The figures (``plot_segment_scores``) refused such a
mask already; segment_means now does too, with the same check.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctc_plugin.features import segment_means


def _values_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.arange(16.0).view(4, 4)
    mask = torch.zeros(4, 4, dtype=torch.long)
    mask[:, 2:] = 3
    return values, mask


@pytest.mark.parametrize("as_array", [False, True])
def test_a_float_mask_of_whole_numbers_gives_the_integer_mask_s_means(as_array):
    values, mask = _values_and_mask()
    floats = mask.double().numpy() if as_array else mask.double()
    got_ids, got = segment_means(values, floats)
    ids, expected = segment_means(values, mask)
    assert torch.equal(got_ids, ids) and torch.equal(got, expected)


@pytest.mark.parametrize("bad", [0.5, 2.75, float("nan"), float("inf")])
def test_a_float_mask_of_fractional_or_non_finite_ids_is_refused(bad):
    values, mask = _values_and_mask()
    fractional = mask.double()
    fractional[0, 1] = bad
    with pytest.raises(ValueError, match=r"feature_mask must hold integer segment ids.*nearest"):
        segment_means(values, fractional)
    with pytest.raises(ValueError, match="feature_mask must hold integer segment ids"):
        segment_means(values, fractional.numpy())


def test_boolean_and_unsigned_masks_are_ids():
    values, mask = _values_and_mask()
    ids, means = segment_means(values, mask.bool().numpy())
    assert ids.tolist() == [0, 1] and means.tolist() == segment_means(values, mask)[1].tolist()
    ids, _ = segment_means(values, mask.to(torch.uint8))
    assert ids.tolist() == [0, 3]
    assert np.array_equal(segment_means(values, mask.numpy().astype(np.uint16))[0], [0, 3])
