"""``baddbmm``, ``addbmm``, ``addmm`` and ``addmv`` score as the model written out with ``@``.

``torch.baddbmm(bias, q, k^T, beta=1, alpha=scale)`` is how attention with a relative position
bias is often written (the logits in one call); ``torch.addmm(b, x, w)`` is Hugging Face
GPT-2's ``Conv1D``, a linear layer. Each call is ``beta * input + alpha * (m1 @ m2)``
(``addbmm``: the products summed over dim 0), and CTC writes it out so: the logits are a
gate-only tensor (the full image's), the product of the probabilities with the values linear
and a constant added to it a bias shared among the copies, ``x @ w + b`` a linear layer. Each
model below runs once with the call and once written out by hand; the scores are equal in
every bias-sharing mode (float64), ``"proportional"`` adds up, and ``addmm`` as a linear layer
scores as ``F.linear``. Where the written-out form is refused (a product over the copies'
dimension, a sum over it), so is the call, naming both.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .exactness import (
    assert_exact_in_every_mode,
    assert_refused,
    assert_same_scores_in_every_mode,
    random_case,
)

D, HEADS, TOKENS = 8, 2, 16
MODES = ("none", "proportional", "reference")
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def _logits(call: bool, bias, q, k, scale, beta=1.0):
    """``beta * bias + scale * (q @ k^T)``: by ``torch.baddbmm`` or written out."""
    if call:
        return torch.baddbmm(bias, q, k.transpose(-2, -1), beta=beta, alpha=scale)
    written = scale * (q @ k.transpose(-2, -1))
    return written if beta == 0 else (bias if beta == 1 else beta * bias) + written


#: name: (the form with the call, the form written out), of (bias, q, k, v, scale), each
#: returning the attention's output (B*heads, T, d).
ATTENTIONS: dict[str, tuple[Callable, Callable]] = {
    "torch.baddbmm(bias, q, k^T, alpha=scale)": (
        lambda b, q, k, v, s: _logits(True, b, q, k, s).softmax(-1) @ v,
        lambda b, q, k, v, s: _logits(False, b, q, k, s).softmax(-1) @ v,
    ),
    "bias.baddbmm(q, k^T, beta=0.5, alpha=scale)": (
        lambda b, q, k, v, s: b.baddbmm(q, k.mT, beta=0.5, alpha=s).softmax(-1) @ v,
        lambda b, q, k, v, s: _logits(False, b, q, k, s, beta=0.5).softmax(-1) @ v,
    ),
    "torch.baddbmm(nan, q, k^T, beta=0, alpha=scale)": (
        lambda b, q, k, v, s: (
            _logits(True, torch.full_like(b, math.nan), q, k, s, beta=0.0).softmax(-1).bmm(v)
        ),
        lambda b, q, k, v, s: _logits(False, b, q, k, s, beta=0.0).softmax(-1) @ v,
    ),
    "torch.baddbmm(bias, p, v): a constant plus the probabilities times the values": (
        lambda b, q, k, v, s: torch.baddbmm(
            b[:1, :, :1], _logits(False, b, q, k, s).softmax(-1), v
        ),
        lambda b, q, k, v, s: b[:1, :, :1] + _logits(False, b, q, k, s).softmax(-1) @ v,
    ),
    "the logits read as a signal (a product of two signals, deferred)": (
        lambda b, q, k, v, s: v + _logits(True, b[:1], q, k, s).mean(-1, keepdim=True),
        lambda b, q, k, v, s: v + _logits(False, b[:1], q, k, s).mean(-1, keepdim=True),
    ),
    "torch.baddbmm(x, q, k^T): the signal plus the logits (a gate-only sum)": (
        lambda b, q, k, v, s: torch.baddbmm(v @ k.mT, q, k.mT).softmax(-1) @ v,
        lambda b, q, k, v, s: (v @ k.mT + q @ k.mT).softmax(-1) @ v,
    ),
}


class _RelativeAttention(nn.Module):
    """Patch tokens, one attention block with a learned relative position bias, a head.

    The heads are merged into the batch, as ``torch.baddbmm`` takes them: ``(B * heads, T,
    d)``. ``call`` picks the form of `ATTENTIONS` the block computes with.
    """

    def __init__(self, kind: str, call: bool) -> None:
        super().__init__()
        self.attend = ATTENTIONS[kind][0 if call else 1]
        self.stem = nn.Conv2d(3, D, 2, stride=2)
        self.qkv = nn.Linear(D, 3 * D)
        self.position_bias = nn.Parameter(torch.randn(HEADS, TOKENS, TOKENS))
        self.project = nn.Linear(D, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = F.gelu(self.stem(x)).flatten(2).transpose(1, 2)  # (B, T, D)
        batch = tokens.shape[0]
        q, k, v = (
            t.reshape(batch, TOKENS, HEADS, -1).transpose(1, 2).reshape(batch * HEADS, TOKENS, -1)
            for t in self.qkv(tokens).chunk(3, dim=-1)
        )
        bias = self.position_bias.repeat(batch, 1, 1)
        out = self.attend(bias, q, k, v, 1.0 / math.sqrt(q.shape[-1]))
        out = out.reshape(batch, HEADS, TOKENS, -1).transpose(1, 2).flatten(2)
        return self.head((tokens + self.project(out)).mean(1))


def _pair(build: Callable[[bool], nn.Module]):
    """The model with the call and the one written out, same parameters, same case."""
    called, x, mask = random_case(lambda: build(True))
    written = build(False).double().eval()
    written.load_state_dict(called.state_dict())
    torch.testing.assert_close(called(x), written(x), **TIGHT)
    return called, written, x, mask


@pytest.mark.parametrize("kind", ATTENTIONS)
def test_attention_with_the_call_scores_as_written_out_in_every_mode(kind: str) -> None:
    called, written, x, mask = _pair(lambda call: _RelativeAttention(kind, call))
    assert_same_scores_in_every_mode(called, written, x, mask, 0, **TIGHT)
    assert_exact_in_every_mode(called, x, mask, 0)


class _Conv1D(nn.Module):
    """Hugging Face GPT-2's ``Conv1D`` (``torch.addmm(b, x, w)``, ``w`` of shape (in, out)).

    ``form``: ``"addmm"``, ``"written"`` (``x @ w + b``) or ``"linear"`` (``F.linear(x, w^T,
    b)``, ``nn.Linear``'s functional form). ``vector`` scores each token by ``torch.addmv``
    (``x @ u + c``) too, and mixes the tokens by those scores' sigmoid.
    """

    def __init__(self, form: str, vector: bool = False) -> None:
        super().__init__()
        self.form, self.vector = form, vector
        self.stem = nn.Conv2d(3, D, 2, stride=2)
        self.weight = nn.Parameter(torch.randn(D, 2 * D))
        self.bias = nn.Parameter(torch.randn(2 * D))
        self.score = nn.Parameter(torch.randn(2 * D))
        self.score_bias = nn.Parameter(torch.randn(()))
        self.head = nn.Linear(2 * D, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = F.relu(self.stem(x)).flatten(2).transpose(1, 2)  # (B, T, D)
        flat = tokens.reshape(-1, D)
        if self.form == "addmm":
            h = torch.addmm(self.bias, flat, self.weight)
        elif self.form == "written":
            h = flat @ self.weight + self.bias
        else:
            h = F.linear(flat, self.weight.T, self.bias)
        h = F.relu(h)
        if self.vector:
            scores = (
                self.score_bias.addmv(h, self.score, alpha=0.5)
                if self.form == "addmm"
                else self.score_bias + 0.5 * (h @ self.score)
            )
            h = h * torch.sigmoid(scores)[:, None]
        return self.head(h.view(x.shape[0], -1, 2 * D).mean(1))


@pytest.mark.parametrize("vector", [False, True], ids=["addmm", "addmm and addmv"])
def test_addmm_scores_as_written_out_and_as_a_linear_layer(vector: bool) -> None:
    called, written, x, mask = _pair(lambda call: _Conv1D("addmm" if call else "written", vector))
    assert_same_scores_in_every_mode(called, written, x, mask, 0, **TIGHT)
    assert_exact_in_every_mode(called, x, mask, 0)
    if not vector:
        linear = _Conv1D("linear").double().eval()
        linear.load_state_dict(called.state_dict())
        assert_same_scores_in_every_mode(called, linear, x, mask, 0, **TIGHT)


@pytest.mark.filterwarnings("ignore:This overload of addmm is deprecated")
def test_the_deprecated_signature_with_the_scales_first_is_read_in_order() -> None:
    """``torch.addmm(beta, input, alpha, mat1, mat2)``, which torch still accepts."""

    class Scaled(_Conv1D):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = F.relu(self.stem(x)).flatten(2).transpose(1, 2).reshape(-1, D)
            if self.form == "addmm":
                h = torch.addmm(0.5, self.bias[None], 2.0, flat, self.weight)
            else:
                h = 0.5 * self.bias[None] + 2.0 * (flat @ self.weight)
            return self.head(h.view(x.shape[0], -1, 2 * D).mean(1))

    called, written, x, mask = _pair(lambda call: Scaled("addmm" if call else "written"))
    assert_same_scores_in_every_mode(called, written, x, mask, 0, **TIGHT)


class _Refused(nn.Module):
    """A convolution's tokens, then ``operation`` of them, the one thing to refuse."""

    def __init__(self, operation: Callable[[torch.Tensor, nn.Module], torch.Tensor]) -> None:
        super().__init__()
        self.operation = operation
        self.stem = nn.Conv2d(3, D, 2, stride=2)
        self.weight = nn.Parameter(torch.randn(D, D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)  # (B, T, D)
        return self.operation(tokens, self).flatten(1)[:, :2]  # any two numbers of it


REFUSED = {
    "the signal as mat2, its copies moved to dim 1": (
        lambda t, m: torch.addmm(m.weight[:, :1], m.weight, t[:, 0].T),
        lambda t, m: m.weight[:, :1] + m.weight @ t[:, 0].T,
        r"torch\.addmm \(written out: torch\.matmul\) in the model \(_Refused\): its input "
        "holds the copies along dim 1",
    ),
    "addbmm of the signal (a sum over the copies)": (
        lambda t, m: torch.addbmm(m.weight[:1], t, m.weight.expand(t.shape[0], D, D)),
        lambda t, m: m.weight[:1] + (t @ m.weight.expand(t.shape[0], D, D)).sum(0),
        r"torch\.addbmm \(written out: torch\.sum\) in the model \(_Refused\): .*dim 0",
    ),
}


@pytest.mark.parametrize("kind", REFUSED)
def test_what_the_written_out_form_refuses_is_refused_naming_the_call(kind: str) -> None:
    call, written, message = REFUSED[kind]
    error = assert_refused(_Refused(call).double().eval(), message, modes=MODES)
    by_hand = assert_refused(_Refused(written).double().eval(), "in the model", modes=MODES)
    assert error.reason == by_hand.reason


def test_out_dtype_is_refused() -> None:
    operation = lambda t, m: torch.addmm(m.weight[0], t[:, 0], m.weight, torch.float64)  # noqa: E731
    assert_refused(
        _Refused(operation).double().eval(),
        r"torch\.addmm in the model \(_Refused\): out_dtype",
        modes=MODES,
    )
