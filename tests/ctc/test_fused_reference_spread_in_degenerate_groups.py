"""The fused ``"reference"`` sharing's spread ``sigma`` in degenerate groups equals the spec's.

``sigma = std(log10 r)`` of the reference full copy, with ``n = q(z_F) + b`` and
``r = ceil(1000 |n / mean(n)|) / 1000``
([`reference_spread`][ctc_plugin.ctc.sharing.reference_spread]). Two groups (a channel's
positions) where the fused one-pass statistics could leave the spec:

- every ``r`` equal (``n`` is ``+1`` on ten positions and ``-1`` on five: ``r = 3`` on all):
  the one-pass variance ``E[l^2] - E[l]^2`` of the equal ``l = log10 r`` rounds to a tiny
  negative number here, and ``sigma`` must be 0 as the spec's, not NaN (which would turn off
  the capping of the copies' spread);
- ``mean(n)`` exactly 0 (``n`` is ``0.5, 1, -1.5``): the spec's ``sigma`` is 0.

The copies' own spreads are not 0, so ``sigma`` decides their shares. Every fused path (one
block, blocks, packed boxes) against the spec's ``add_bias`` in float64.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.sharing import make_sharing
from ctc_plugin.ctc.speedups import Speedups

#: (z_F of the 3x5 positions of the group, the bias): q(z) = ceil(10 z) / 10, so
#: q(0.45) = 0.5, q(-1.55) = -1.5, q(-0.05) = 0 and q(-2.05) = -2.
GROUPS = {
    "every r equal": ([0.45] * 10 + [-1.55] * 5, 0.5),
    "mean of n zero": ([-0.05, 0.45, -2.05] * 5, 0.5),
}

#: (block_elements, packed_boxes) of the fused paths.
PATHS = [(None, 0.0), (1 << 20, 0.0), (1 << 20, 1.0), (8, 1.0)]


def _layer(full: list[float], bias: float) -> tuple[torch.Tensor, torch.Tensor, CopyLayout]:
    """z of one example (gate, full copy, two features, one channel of 3x5) and its bias."""
    layout = CopyLayout(1, 2, reference_full=True, baseline=False)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(1, layout.copies, 1, 3, 5, generator=generator, dtype=torch.float64) * 2
    z[:, 1] = torch.tensor(full, dtype=torch.float64).view(1, 3, 5)
    z[:, 3, :, :, 3:] = 0.0  # a feature copy with a box
    return z, torch.full((1, 1, 1), bias, dtype=torch.float64), layout


@pytest.mark.parametrize("paths", PATHS, ids=[f"{b}-{p}" for b, p in PATHS])
@pytest.mark.parametrize("group", GROUPS)
def test_fused_reference_shares_equal_the_spec(group, paths):
    z, bias, layout = _layer(*GROUPS[group])
    expected = make_sharing("reference").add_bias(z, bias, layout)
    block_elements, packed_boxes = paths
    sharing = Speedups(block_elements=block_elements, packed_boxes=packed_boxes).sharing(
        "reference"
    )
    actual = sharing.add_bias(z.clone(), bias, layout)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_the_groups_are_degenerate():
    """The cases are what they claim: one value of ``r``, and ``n`` summing to exactly 0."""
    from ctc_plugin.ctc.sharing import tenfold_quantised

    for group, (full, bias) in GROUPS.items():
        n = tenfold_quantised(torch.tensor(full, dtype=torch.float64)) / 10.0 + bias
        if group == "every r equal":
            r = ((n / n.mean()).abs() * 1000.0).ceil() / 1000.0
            assert r.unique().numel() == 1
        else:
            assert float(n.sum()) == 0.0
