"""The fused sharing of a bias given per copy, ``(N, C, channels, 1, 1)``, equals the spec's.

A bias may come in the grouped form, one per example and copy
([`GatedPass.affine`][ctc_plugin.ctc.rules.GatedPass.affine]). The random layers of
``test_speedups.py`` give every copy of an example the same one; here each copy has its own, so
a share computed with another copy's bias shows. ``"reference"`` is also computed on the packed
boxes of its copies (each copy zero outside a box, the full copy nowhere zero), where the bias
of each packed copy is picked by its index.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.sharing import make_sharing
from ctc_plugin.ctc.speedups import Speedups

from .test_speedups import MODES


@pytest.mark.parametrize("examples", [1, 2])
@pytest.mark.parametrize("packed_boxes", [0.0, 1.0], ids=["whole", "packed"])
@pytest.mark.parametrize("mode", MODES)
def test_a_bias_per_copy_gets_the_spec_shares(mode, packed_boxes, examples):
    layout = CopyLayout(examples, 3, reference_full=True, baseline=False)
    generator = torch.Generator().manual_seed(examples)
    shape = (examples, layout.copies, 3, 6, 6)
    z = torch.randn(shape, generator=generator, dtype=torch.float64) * 2
    z[:, 2:, :, :, 3:] = 0.0  # the feature copies in boxes of different sizes
    z[:, 3, :, 4:] = 0.0
    bias = torch.randn(examples, layout.copies, 3, 1, 1, generator=generator, dtype=z.dtype)
    expected = make_sharing(mode).add_bias(z, bias, layout)
    for block_elements in (None, 1 << 20, 40):
        speedups = Speedups(block_elements=block_elements, packed_boxes=packed_boxes)
        actual = speedups.sharing(mode).add_bias(z.clone(), bias, layout)
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
