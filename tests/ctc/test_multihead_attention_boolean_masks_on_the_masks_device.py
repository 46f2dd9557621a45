"""``F.multi_head_attention_forward`` called with boolean masks on a CUDA device.

The decomposition turns a boolean ``attn_mask`` or ``key_padding_mask`` into an additive float
mask: it must be built where the mask lives, or the masks of a model on a GPU meet a CPU tensor.
CUDA is faked (``FakeTensorMode``: shapes and devices, no GPU); ``tests/test_cuda.py`` runs the
whole attribution on a real device.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ctc_plugin.ctc.attention import _attention_mask


@pytest.mark.parametrize("which", ["attn_mask", "key_padding_mask", "both"])
def test_boolean_masks_become_additive_on_the_cuda_device(which):
    with FakeTensorMode(allow_non_fake_inputs=True):
        q = torch.zeros(2, 2, 4, 3, dtype=torch.float64, device="cuda")  # (N, heads, L, E)
        call = {}
        if which in ("attn_mask", "both"):
            call["attn_mask"] = torch.zeros(4, 5, dtype=torch.bool, device="cuda")
        if which in ("key_padding_mask", "both"):
            call["key_padding_mask"] = torch.zeros(2, 5, dtype=torch.bool, device="cuda")
        mask = _attention_mask(call, q)
    assert mask.device.type == "cuda"
    assert mask.dtype == torch.float64


def test_boolean_masks_become_minus_infinity_where_true():
    attn = torch.tensor([[False, True], [False, False]])
    padding = torch.tensor([[False, False], [True, False]])
    q = torch.zeros(2, 1, 2, 3, dtype=torch.float32)
    mask = _attention_mask({"attn_mask": attn, "key_padding_mask": padding}, q)
    expected = torch.zeros(2, 1, 2, 2)
    expected[:, :, 0, 1] = float("-inf")
    expected[1, :, :, 0] = float("-inf")
    assert mask.dtype == torch.float32
    assert torch.equal(mask, expected)
