"""Gate-only tensors (attention probabilities and what is made of them alone) stay the full
pass's values in every copy, whatever operations the model applies to them.

A hand-written attention block whose probabilities go through a biased layer (talking heads),
a renormalisation with a constant, a product with another gate or a sigmoid before ``@ v``:
"proportional" scores add up to the logit, the "none" shortcut equals the pass of copies and
the Zennit attributor equals the Captum class. A gate-only tensor used as a signal, and an
attention mask CTC cannot follow, are refused by name.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin import CTC, CTCAttributor, CTCComposite
from ctc_plugin.ctc.errors import UnsupportedOperationError
from ctc_plugin.ctc.speedups import Speedups

VARIANTS = ["talking", "renorm", "gated", "sigmoid", "relative_bias"]


class Attention(nn.Module):
    """Two heads over 16 patch tokens and a class token; ``variant`` changes the probabilities."""

    def __init__(self, variant: str, width: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.variant, self.heads = variant, heads
        self.embed = nn.Conv2d(3, width, 4, 4)
        self.token = nn.Parameter(torch.randn(1, 1, width))
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, 4)
        self.mix = nn.Linear(heads, heads)  # talking heads: a biased layer on the probabilities
        self.gate = nn.Linear(width, heads)
        self.bias = nn.Parameter(torch.randn(heads, 17, 17))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.token.expand(t.shape[0], -1, -1), t], 1)
        b, n, c = t.shape
        q, k, v = self.qkv(t).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5
        if self.variant == "relative_bias":
            a = (a + self.bias).softmax(-1)
        elif self.variant == "sigmoid":
            a = torch.sigmoid(a - 1.0)
        else:
            a = a.softmax(-1)
        if self.variant == "talking":
            a = self.mix(a.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        elif self.variant == "renorm":
            a = a / (a.sum(-1, keepdim=True) + 1e-3)
        elif self.variant == "gated":
            a = a * torch.sigmoid(self.gate(t)).permute(0, 2, 1).unsqueeze(-1)
        t = t + self.out((a @ v).transpose(1, 2).reshape(b, n, c))
        return self.head(self.norm(t)[:, 0])


def case(variant: str):
    torch.manual_seed(3)
    model = Attention(variant).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    cells = torch.arange(16) // 4
    mask = torch.stack([cells[:, None] * 4 + cells[None, :], cells[:, None] + 4 * cells[None, :]])
    return model, x, mask[:, None], [1, 3]


@pytest.mark.parametrize("variant", VARIANTS)
def test_proportional_scores_add_up_to_the_logit(variant):
    model, x, mask, target = case(variant)
    _, scores = CTC(model, bias_sharing="proportional").attribute(
        x, target, feature_mask=mask, return_feature_scores=True
    )
    logits = model(x).detach()[[0, 1], target]
    torch.testing.assert_close(scores.scores.sum(1), logits, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_none_shortcut_equals_the_pass_of_copies(variant):
    model, x, mask, target = case(variant)
    fast, full = CTC(model, bias_sharing="none"), CTC(model, bias_sharing="none")
    full._speedups = Speedups(gradient_shortcut=False)
    torch.testing.assert_close(
        fast.attribute(x, target, feature_mask=mask),
        full.attribute(x, target, feature_mask=mask),
        rtol=1e-9,
        atol=1e-12,
    )


@pytest.mark.parametrize("mode", ["none", "proportional", "reference"])
@pytest.mark.parametrize("variant", ["talking", "gated"])
def test_the_zennit_attributor_equals_the_captum_class(variant, mode):
    model, x, mask, target = case(variant)
    expected = CTC(model, bias_sharing=mode).attribute(x, target, feature_mask=mask)
    with CTCAttributor(model, CTCComposite(bias_sharing=mode), feature_mask=mask) as attributor:
        _, relevance = attributor(x, torch.eye(4, dtype=x.dtype)[target])
    torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-12)


class GateAsSignal(nn.Module):
    """A squashed gate-only tensor added to the tokens: it carries no copy of a signal."""

    def __init__(self, squash) -> None:
        super().__init__()
        self.squash = squash
        self.embed, self.head = nn.Conv2d(3, 16, 4, 4), nn.Linear(16 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)  # (N, 16 tokens, 16)
        scores = t @ t.transpose(-2, -1)  # queries times keys: gate-only
        return self.head((t + self.squash(scores)).flatten(1))


@pytest.mark.parametrize("squash", [torch.sigmoid, torch.tanh, F.relu6, F.hardsigmoid])
def test_a_squashed_gate_only_tensor_used_as_a_signal_is_refused(squash):
    model = GateAsSignal(squash).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    mask = (torch.arange(16) // 8)[None, None, :, None].expand(1, 1, 16, 16)
    for mode in ("none", "proportional"):
        with pytest.raises(UnsupportedOperationError, match="gate tensor computed for the full"):
            CTC(model, bias_sharing=mode).attribute(x, 0, feature_mask=mask)


def test_a_per_head_attention_mask_is_refused_by_name():
    attention = nn.MultiheadAttention(8, 2, batch_first=True).double().eval()
    head = nn.Linear(8, 3).double()

    def forward(x):
        tokens = x.flatten(2).transpose(1, 2)
        mask = torch.zeros(x.shape[0] * 2, 16, 16, dtype=x.dtype)  # (N * heads, L, S)
        return head(attention(tokens, tokens, tokens, attn_mask=mask)[0].mean(1))

    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    mask = (torch.arange(4) // 2)[None, None, :, None].expand(1, 1, 4, 4)
    with pytest.raises(UnsupportedOperationError, match="3-d attn_mask .* key_padding_mask"):
        CTC(forward, bias_sharing="proportional").attribute(x, 0, feature_mask=mask)


class InPlaceResidual(nn.Module):
    """``h += conv(h)`` after ``h`` fed a layer: autograd cannot go back through it."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.first(x))
        h += self.second(h)
        return self.head(h.mean((2, 3)))


def test_none_falls_back_to_the_pass_of_copies_where_autograd_cannot_follow():
    torch.manual_seed(0)
    model = InPlaceResidual().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    mask = (torch.arange(8) // 4)[None, None, :, None].expand(1, 1, 8, 8)
    full = CTC(model, bias_sharing="none")
    full._speedups = Speedups(gradient_shortcut=False)
    torch.testing.assert_close(
        CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask),
        full.attribute(x, 1, feature_mask=mask),
    )
