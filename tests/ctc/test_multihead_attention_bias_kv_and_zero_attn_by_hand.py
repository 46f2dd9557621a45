"""``nn.MultiheadAttention`` with ``add_bias_kv`` and ``add_zero_attn`` against the network by hand.

``add_bias_kv`` appends a learned key row (``bias_k``) and a learned value row (``bias_v``) to
every sequence's projected keys and values; ``add_zero_attn`` then appends a row of zeros to
both; the masks get as many columns, not masked. The rows are constants concatenated to the
signal, as a class token is: a value row is a bias shared among the copies, a key row part of
the full image's probabilities (a gate). The model below runs once through the module and once
written out by hand with ``torch.cat``; the scores are equal in every bias-sharing mode
(float64), ``"none"`` is gradient x input of the network written out with its probabilities
detached, and ``"proportional"`` adds up to the logit. The returned weights (one column per
appended row) scale the output, so a wrong column would show.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin import CTC, UnsupportedOperationError

from .exactness import (
    assert_none_is_gradient_x_input,
    assert_proportional_adds_up,
    assert_same_scores_in_every_mode,
    feature_scores,
)

TOKENS, WIDTH, HEADS = 5, 8, 2
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


class _Attention(nn.Module):
    """Tokens (N, T, 3) embedded, one ``nn.MultiheadAttention`` with ``options``, a head.

    ``form``: ``"module"``, ``"by hand"`` (the same network with ``torch.cat``) or
    ``"linearised"`` (by hand, the probabilities detached: the full pass's gate). ``masks``
    adds a boolean attention mask and a key padding mask.
    """

    def __init__(self, options: dict, masks: bool, batch_first: bool) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.arguments = (options, masks, batch_first)
        self.masks, self.batch_first = masks, batch_first
        self.form = "module"
        self.embed = nn.Linear(3, WIDTH)
        self.attention = nn.MultiheadAttention(WIDTH, HEADS, batch_first=batch_first, **options)
        with torch.no_grad():  # distinct, nonzero rows and biases
            self.attention.in_proj_bias.copy_(torch.randn(3 * WIDTH))
            for name in ("bias_k", "bias_v"):
                if getattr(self.attention, name, None) is not None:
                    getattr(self.attention, name).copy_(torch.randn(1, 1, WIDTH))
        appended = int(options.get("add_bias_kv", False)) + int(options.get("add_zero_attn", False))
        self.register_buffer("mix", torch.randn(TOKENS + appended))
        self.head = nn.Linear(WIDTH, 3)
        generator = torch.Generator().manual_seed(4)
        blocked = torch.rand(TOKENS, TOKENS, generator=generator) > 0.6
        blocked &= ~torch.eye(TOKENS, dtype=torch.bool)  # every query keeps its own key
        padding = torch.zeros(2, TOKENS, dtype=torch.bool)
        padding[0, -1], padding[1, 0] = True, True
        blocked[-1, :-1], blocked[0, 1:] = False, False  # whose own key is padded keep others
        self.register_buffer("blocked", blocked)
        self.register_buffer("padding", padding)

    def _by_hand(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention, batch = self.attention, h.shape[0]
        q, k, v = (
            F.linear(h, w, b)
            for w, b in zip(attention.in_proj_weight.chunk(3), attention.in_proj_bias.chunk(3))
        )
        if attention.bias_k is not None:
            k = torch.cat([k, attention.bias_k.expand(batch, 1, WIDTH)], dim=1)
            v = torch.cat([v, attention.bias_v.expand(batch, 1, WIDTH)], dim=1)
        if attention.add_zero_attn:
            k = torch.cat([k, torch.zeros(batch, 1, WIDTH, dtype=k.dtype)], dim=1)
            v = torch.cat([v, torch.zeros(batch, 1, WIDTH, dtype=v.dtype)], dim=1)
        q, k, v = (t.unflatten(-1, (HEADS, -1)).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if self.masks:
            extra = k.shape[-2] - TOKENS  # the appended keys are never masked
            blocked = F.pad(self.blocked, (0, extra))
            padding = F.pad(self.padding, (0, extra))[:, None, None, :]
            scores = scores.masked_fill(blocked | padding, -math.inf)
        p = scores.softmax(-1)
        if self.form == "linearised":
            p = p.detach()
        out = attention.out_proj((p @ v).transpose(1, 2).flatten(2))
        return out, p.mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        if self.form != "module":
            out, weights = self._by_hand(h)
        else:
            masks = {"attn_mask": self.blocked, "key_padding_mask": self.padding}
            g = h if self.batch_first else h.transpose(0, 1)
            out, weights = self.attention(g, g, g, **(masks if self.masks else {}))
            out = out if self.batch_first else out.transpose(0, 1)
        out = out * (weights @ self.mix)[..., None]  # the weights (a gate) scale the output
        return self.head(out.mean(1))


OPTIONS = {
    "add_bias_kv": {"add_bias_kv": True},
    "add_zero_attn": {"add_zero_attn": True},
    "both": {"add_bias_kv": True, "add_zero_attn": True},
}
CASES = {
    f"{name}{', masks' if masks else ''}{'' if first else ', sequence first'}": (
        options,
        masks,
        first,
    )
    for name, options in OPTIONS.items()
    for masks in (False, True)
    for first in (True, False)
    if first or (masks and name == "both")
}


def _case(name: str):
    model = _Attention(*CASES[name]).double().eval()
    x = torch.randn(2, TOKENS, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mask = torch.tensor([0, 0, 1, 2, 2]).view(1, TOKENS, 1).expand(1, TOKENS, 3)
    return model, x, mask


def _as(model: _Attention, form: str) -> _Attention:
    """``model`` computing in ``form`` (its parameters shared)."""
    twin = _Attention(*model.arguments).double().eval()
    twin.load_state_dict(model.state_dict())
    twin.form = form
    return twin


@pytest.mark.parametrize("name", CASES)
def test_the_module_scores_as_the_network_written_out_in_every_mode(name: str) -> None:
    model, x, mask = _case(name)
    by_hand = _as(model, "by hand")
    torch.testing.assert_close(model(x), by_hand(x), **TIGHT)
    assert_same_scores_in_every_mode(model, by_hand, x, mask, 0, **TIGHT)


@pytest.mark.parametrize("name", CASES)
def test_none_is_gradient_x_input_and_proportional_adds_up(name: str) -> None:
    model, x, mask = _case(name)
    linearised = _as(model, "linearised")
    assert_none_is_gradient_x_input(model, x, mask, [0, 2], linearised, same_output=TIGHT, **TIGHT)
    assert_proportional_adds_up(model, x, mask, [0, 2], rtol=1e-10, atol=1e-10)


def test_the_value_row_is_a_bias_the_copies_share() -> None:
    """``bias_v`` is a bias: ``"none"`` (no bias shared) gives it to no feature, so its scores
    are those of the model without it, whose output differs; ``"proportional"`` shares it,
    and still adds up."""
    model, x, mask = _case("add_bias_kv")
    without = _as(model, "module")
    with torch.no_grad():
        without.attention.bias_v.zero_()
    assert (model(x) - without(x)).abs().max() > 1e-2
    torch.testing.assert_close(
        feature_scores(model, x, mask, 0, "none").scores,
        feature_scores(without, x, mask, 0, "none").scores,
        **TIGHT,
    )
    shared = assert_proportional_adds_up(model, x, mask, 0, rtol=1e-10, atol=1e-10)
    unshared = feature_scores(without, x, mask, 0, "proportional")
    assert (shared.scores - unshared.scores).abs().max() > 1e-3


def test_static_keys_are_refused_saying_why() -> None:
    """``static_k``/``static_v`` (only the function takes them) stay refused, with the reason."""

    class Static(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.MultiheadAttention(WIDTH, HEADS)
            self.embed = nn.Linear(3, WIDTH)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x).transpose(0, 1)
            a = self.attention
            static = torch.ones(x.shape[0] * HEADS, TOKENS, WIDTH // HEADS, dtype=h.dtype)
            out, _ = F.multi_head_attention_forward(
                h, h, h, WIDTH, HEADS, a.in_proj_weight, a.in_proj_bias, None, None, False,
                0.0, a.out_proj.weight, a.out_proj.bias, training=False, static_k=static,
            )  # fmt: skip
            return out.mean(0)

    model = Static().double().eval()
    x = torch.randn(2, TOKENS, 3, dtype=torch.float64)
    mask = torch.tensor([0, 0, 1, 2, 2]).view(1, TOKENS, 1).expand(1, TOKENS, 3)
    with pytest.raises(UnsupportedOperationError, match="static_k hold keys or values per example"):
        CTC(model).attribute(x, 0, feature_mask=mask)


def test_bias_k_without_bias_v_is_a_mistake_as_torch_says() -> None:
    """torch refuses it; the decomposition, which replaces torch's code, must not ignore it."""

    class OneSided(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.MultiheadAttention(WIDTH, HEADS, add_bias_kv=True)
            self.embed = nn.Linear(3, WIDTH)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, a = self.embed(x).transpose(0, 1), self.attention
            out, _ = F.multi_head_attention_forward(
                h, h, h, WIDTH, HEADS, a.in_proj_weight, a.in_proj_bias, a.bias_k, None, False,
                0.0, a.out_proj.weight, a.out_proj.bias, training=False,
            )  # fmt: skip
            return out.mean(0)

    model = OneSided().double().eval()
    x = torch.randn(2, TOKENS, 3, dtype=torch.float64)
    mask = torch.tensor([0, 0, 1, 2, 2]).view(1, TOKENS, 1).expand(1, TOKENS, 3)
    with pytest.raises(AssertionError, match="bias_k is set but bias_v is None"):
        model(x)
    with pytest.raises(ValueError, match="bias_k and bias_v are given together or not at all"):
        CTC(model).attribute(x, 0, feature_mask=mask)
