"""OpenAI CLIP's sequence-first vision transformer is explained exactly.

CLIP permutes its tokens from ``(N, L, D)`` to ``(L, N, D)`` (the copies then lie along dim 1)
and runs LayerNorms over ``D`` (a subclass computing in ``x.type(torch.float32)``), linear layers
over ``D``, residual sums, QuickGELU (``x * torch.sigmoid(1.702 * x)``) and
``nn.MultiheadAttention`` (``batch_first=False``) there, then permutes back. Rules confined to
the last dims follow the moved copies: ``"proportional"`` scores add up to the logit and equal
the spec's, ``"none"``'s shortcut equals its pass of copies, and the Zennit attributor equals
the Captum class. Operations that would act on the copies' dim stay refused.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.speedups import Speedups

from .exactness import (
    assert_equals_the_spec,
    assert_proportional_adds_up,
    assert_refused,
    assert_zennit_equals_captum,
    random_case,
)

WIDTH, HEADS = 8, 2


class LayerNorm(nn.LayerNorm):
    """CLIP's LayerNorm (fp16 there): computed in the dtype of its weight, cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig_type = x.dtype
        ret = super().forward(x.type(self.weight.dtype))
        return ret.type(orig_type)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(d_model, d_model * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(d_model * 4, d_model)),
                ]
            )
        )
        self.ln_2 = LayerNorm(d_model)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False, attn_mask=None)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class VisionTransformer(nn.Module):
    """CLIP's ``VisionTransformer``, small: 2x2 patches of an 8x8 image, two blocks."""

    def __init__(self, gelu: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTH, 2, 2, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(WIDTH))
        self.positional_embedding = nn.Parameter(torch.randn(17, WIDTH))
        self.ln_pre = LayerNorm(WIDTH)
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(WIDTH, HEADS) for _ in range(2)])
        if gelu:
            for block in self.resblocks:
                block.mlp.gelu = nn.GELU()
        self.ln_post = LayerNorm(WIDTH)
        self.proj = nn.Parameter(torch.randn(WIDTH, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        zeros = torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
        x = torch.cat([self.class_embedding.to(x.dtype) + zeros, x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)  # NLD -> LND
        x = self.resblocks(x)
        x = x.permute(1, 0, 2)  # LND -> NLD
        x = self.ln_post(x[:, 0, :])
        return x @ self.proj


def _case(gelu: bool = False) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return random_case(lambda: VisionTransformer(gelu), scale=0.3, add=True)


@pytest.mark.parametrize("gelu", [False, True], ids=["QuickGELU", "GELU"])
def test_proportional_scores_add_up_and_equal_the_spec(gelu: bool) -> None:
    model, x, mask = _case(gelu)
    scores = assert_proportional_adds_up(model, x, mask, 1, relative=1e-10)
    assert_equals_the_spec(model, x, mask, 1, scores, rtol=1e-9, atol=1e-12)


def test_the_none_shortcut_equals_its_pass_of_copies() -> None:
    model, x, mask = _case()
    shortcut = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    copies = CTC(model, bias_sharing="none")
    copies._speedups = Speedups(gradient_shortcut=False)
    torch.testing.assert_close(
        copies.attribute(x, 1, feature_mask=mask), shortcut, rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
def test_the_zennit_attributor_equals_the_captum_class(mode: str) -> None:
    model, x, mask = _case()
    assert_zennit_equals_captum(model, x, mask, 1, mode)


class _SequenceFirst(nn.Module):
    """Tokens (L, N, D), then ``operation``, which would act on the copies' dim 1."""

    def __init__(self, operation) -> None:
        super().__init__()
        self.operation = operation
        self.embed, self.head = nn.Conv2d(3, 4, 2, 2), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).permute(2, 0, 1)  # (L, N, D)
        return self.head(self.operation(tokens).mean(0))


@pytest.mark.parametrize(
    "operation, message",
    [
        (lambda t: nn.functional.layer_norm(t, t.shape[1:]), r"layer_norm .*along dim 1"),
        (lambda t: nn.functional.linear(t.transpose(1, 2), torch.ones(3, 3)), r"linear .*dim 2"),
        (lambda t: t.softmax(1), r"softmax .*along dim 1"),
    ],
)
def test_operations_on_the_copies_dim_stay_refused(operation, message: str) -> None:
    model = _SequenceFirst(operation).double().eval()
    assert_refused(model, message, x=torch.rand(3, 3, 8, 8, dtype=torch.float64))
