"""``"reference"``'s spread does not depend on how the full copy's maps lie in memory.

``r = ceil(1000 |n / mean(n)|) / 1000``: where some ``n`` equal their mean (``n = q(z_F) + b``
takes few values on a small map), ``n / mean(n)`` was 1 give or take an ulp that depended on
the order of the mean's sum, so channels-last maps (the spec pass of ConvNeXt) and contiguous
ones (the sparse and fused passes) gave ``r`` of 1 and 1.001, and the default pass's float64
scores lay 1.6e-7 of the largest from the spec's, against 2e-12 of rounding noise (outside
review). The mean is now summed over whole numbers, exactly in any order.
"""

from __future__ import annotations

import torch

from ctc_plugin.ctc.fused_sharing import full_copy_statistics
from ctc_plugin.ctc.sharing import reference_spread


def _full_copy(channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One ConvNeXt-like channel repeated: n equals its mean exactly at the zero entries."""
    q = torch.tensor([-1, 0, 0, 1, 0, -2, -1, -1, 1, -3, 0, 0, 1, 3, 1, 1], dtype=torch.float64)
    q = q / 10
    bias = 0.024000427126884463 - q.mean()
    channels = 192
    z = (q.view(1, 1, 1, 4, 4) - 0.05).expand(1, 1, channels, 4, 4).clone()  # q(z) = q
    if channels_last:
        z = z.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return z, torch.full((channels, 1, 1), float(bias), dtype=torch.float64)


def test_the_spread_is_the_same_for_channels_last_and_contiguous_maps():
    contiguous = reference_spread(*_full_copy(False), (3, 4))
    channels_last = reference_spread(*_full_copy(True), (3, 4))
    assert torch.equal(contiguous, channels_last)
    for channels_last in (False, True):  # the fused formula gives the spec's (its own std)
        z, bias = _full_copy(channels_last)
        sigma = full_copy_statistics(z, bias, (3, 4)).sigma
        torch.testing.assert_close(sigma, contiguous, rtol=1e-13, atol=0)  # a flip: 1.8e-4


def test_a_bias_that_varies_along_the_map_is_averaged():
    z, _ = _full_copy(False)
    bias = torch.linspace(-0.3, 0.4, 16, dtype=torch.float64).view(4, 4)
    by_hand = z.mul(10).ceil().div(10) + bias
    mean = by_hand.mean(dim=(3, 4), keepdim=True)
    r = (by_hand / mean).abs().mul(1000).ceil().div(1000)
    expected = r.log10().std(dim=(3, 4), correction=0, keepdim=True)
    torch.testing.assert_close(reference_spread(z, bias, (3, 4)), expected, rtol=1e-12, atol=0)
