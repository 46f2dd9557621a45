"""The ``"proportional"`` shares of the spec on a hand-worked layer, with and without presence.

``s_k = |z_k| / sum_j |z_j|`` over the sharing copies; where every ``z_j`` is 0 an equal split
among the present copies (all sharing copies when the layout says nothing about presence). The
gate copy gets the whole bias. Shares sum to one at every unit.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.sharing import ProportionalSharing
from ctc_plugin.ctc.speedups import Speedups

# one example, a gate copy and three feature copies; two units: (1, -3, 0) and all zero
Z = torch.tensor([[[5.0, 7.0], [1.0, 0.0], [-3.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
BIAS = torch.tensor([2.0, 6.0], dtype=torch.float64)


def _sharings():
    return {
        "spec": ProportionalSharing(),
        "fused": Speedups(block_elements=None).sharing("proportional"),
        "fused, no host checks": Speedups(host_checks=False).sharing("proportional"),
    }


@pytest.mark.parametrize("name", list(_sharings()))
def test_without_presence_every_sharing_copy_shares_an_all_zero_unit(name):
    layout = CopyLayout(examples=1, features=3, reference_full=False, baseline=False)
    out = _sharings()[name].add_bias(Z.clone(), BIAS, layout)
    expected = torch.tensor(
        [[[7.0, 13.0], [1.0 + 0.5, 2.0], [-3.0 + 1.5, 2.0], [0.0, 2.0]]], dtype=torch.float64
    )
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # the sharing copies' shares of each unit's bias add up to the bias
    torch.testing.assert_close((out - Z)[0, 1:].sum(0), BIAS, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(_sharings()))
def test_absent_copies_get_no_share_of_an_all_zero_unit(name):
    presence = torch.tensor([[True, False, True]])
    layout = CopyLayout(1, 3, reference_full=False, baseline=False, presence=presence)
    out = _sharings()[name].add_bias(Z.clone(), BIAS, layout)
    expected = torch.tensor(
        [[[7.0, 13.0], [1.5, 3.0], [-1.5, 0.0], [0.0, 3.0]]], dtype=torch.float64
    )
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
