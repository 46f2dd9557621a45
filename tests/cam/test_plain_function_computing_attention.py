"""A plain function (no module to search for blocks) that computes attention is refused clearly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam.integrative import UnknownBlocksError

# the refusal names the reasons of the timm blocks it cannot find, read only once timm is imported
pytest.importorskip("timm")


def test_a_plain_function_computing_attention_gets_the_unknown_blocks_refusal() -> None:
    torch.manual_seed(0)
    embed = torch.nn.Conv2d(3, 4, 4, stride=4)

    def forward(x: torch.Tensor) -> torch.Tensor:
        tokens = embed(x).flatten(2).mT
        return F.scaled_dot_product_attention(tokens, tokens, tokens).mean(1)

    with pytest.raises(UnknownBlocksError, match="computes attention.*layers="):
        IntegrativeCAM(forward).attribute(torch.rand(1, 3, 16, 16), target=0)
