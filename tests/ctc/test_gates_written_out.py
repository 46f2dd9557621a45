"""Products of two signals, powers, switches, comparisons and activations written out are exact.

A product of two signals that are no gate tensors (SwiGLU's ``silu(a) * b``) gives half of it to
each factor's copies, ``(a_k * b_0 + a_0 * b_k) / 2`` (AttnLRP's uniform rule); a power of the
signal (``a * a``, ``a ** 3``, StarReLU's ``relu(a) ** 2``, in place too) is a rescale gate whose
output is also a gate tensor; ``torch.maximum`` of two signals and ``torch.where`` with a
condition the full image decides (``x > 0``) or a constant take every copy's entries of the
operand the gate copy selected; comparisons and signs are gate-only tensors of the full pass, as
is an operation without a rule of a gate tensor (``erfinv``); ``addcmul``/``addcdiv`` are their
product and sum; ``unfold``/``fold`` are linear; ``repeat_interleave`` along the copies keeps each
copy's rows together. A quotient by a signal divides by the full pass's divisor (a gate, as a
normalisation's statistic), as ``F.normalize`` divides by its norm, and ``torch.div(1, b)`` is
a gate-only tensor; a nonzero constant padded in is a bias shared among the copies, as a
constant concatenated. Exact means, for each:
``"proportional"`` scores add up to the logit (float64) and equal the spec's; ``"none"`` is
gradient x input of the network with these gates held fixed (written out below with
``detach``); the Zennit attributor equals the Captum class; each written-out activation gives
the scores of the torch function it stands for; and the uniform rule is checked by hand. What
stays refused says so by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin import CTC, UntracedOutputError
from ctc_plugin.ctc.speedups import Speedups

from .exactness import (
    assert_equals_the_spec,
    assert_none_is_gradient_x_input,
    assert_proportional_adds_up,
    assert_proportional_is_exact,
    assert_refused,
    assert_zennit_equals_captum,
    feature_scores,
    held_fixed,
    random_case,
)

C = 4
Operation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _half_each(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The product with each factor's other factor held fixed, half each (the uniform rule)."""
    return (a * b.detach() + a.detach() * b) / 2


def _rescaled(x: torch.Tensor, y: torch.Tensor, at_zero: float = 0.0) -> torch.Tensor:
    """``x`` times the fixed factor ``y / x`` of an activation's output ``y`` (a rescale gate).

    For an activation with ``f(0) = at_zero != 0``, ``at_zero + x * ((y - at_zero) / x)``: the
    constant is a bias, the factor the rise from it.
    """
    return at_zero + x * ((y - at_zero) / x).detach()


def _tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU (Hugging Face's ``NewGELUActivation``), written out."""
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))
    return 0.5 * x * (1.0 + torch.tanh(inner))


def _masked_relu_in_place(a: torch.Tensor) -> torch.Tensor:
    a = a.clone()
    a.masked_fill_(a < 0, 0.0)
    return a


_LOWER_TRIANGLE = torch.ones(8, 8, dtype=torch.bool).tril()
_ALPHA, _BETA = torch.linspace(0.5, 1.5, C).view(C, 1, 1), torch.linspace(-1, 1, C).view(C, 1, 1)

#: name -> (the operation as the model writes it, the same with its gates held fixed).
KINDS: dict[str, tuple[Operation, Operation]] = {
    "a * b": (lambda a, b: a * b, _half_each),
    "a *= b": (lambda a, b: a.mul_(b), _half_each),
    "torch.mul(a, a.flip(-1))": (
        lambda a, b: torch.mul(a, a.flip(-1)),
        lambda a, b: _half_each(a, a.flip(-1)),
    ),
    "SwiGLU silu(a) * b": (
        lambda a, b: F.silu(a) * b,
        lambda a, b: _half_each(_rescaled(a, F.silu(a)), b),
    ),
    "(a + 1).clamp(min=1) * a": (
        lambda a, b: (a + 1.0).clamp(min=1.0) * a,
        lambda a, b: _half_each(_rescaled(a + 1.0, (a + 1.0).clamp(min=1.0), 1.0), a),
    ),
    "(a + 1).clip(max=1) * a": (
        lambda a, b: (a + 1.0).clip(max=1.0) * a,
        lambda a, b: _half_each(_rescaled(a + 1.0, (a + 1.0).clip(max=1.0)), a),
    ),
    "torch.maximum(a, b)": (
        torch.maximum,
        lambda a, b: torch.where(a.detach() >= b.detach(), a, b),
    ),
    "torch.minimum(a, b)": (
        torch.minimum,
        lambda a, b: torch.where(a.detach() <= b.detach(), a, b),
    ),
    "torch.max(a, b)": (torch.max, lambda a, b: torch.where(a.detach() >= b.detach(), a, b)),
    "torch.where(a > b, a, b)": (
        lambda a, b: torch.where(a > b, a, b),
        lambda a, b: torch.where(a > b, a, b),
    ),
    "torch.where(a > 0, a, 0.1 * a)": (
        lambda a, b: torch.where(a > 0, a, 0.1 * a),
        lambda a, b: torch.where(a > 0, a, 0.1 * a),
    ),
    "torch.where(a > 0, a, 0.5)": (
        lambda a, b: torch.where(a > 0, a, 0.5),
        lambda a, b: torch.where(a > 0, a, 0.5),
    ),
    "torch.where(b <= 0, -0.25, a)": (
        lambda a, b: torch.where(b <= 0, -0.25, a),
        lambda a, b: torch.where(b <= 0, -0.25, a),
    ),
    "a.where(a.ge(b), b)": (lambda a, b: a.where(a.ge(b), b), lambda a, b: a.where(a.ge(b), b)),
    "a.masked_fill(a < 0, 0)": (
        lambda a, b: a.masked_fill(a < 0, 0.0),
        lambda a, b: a.masked_fill(a < 0, 0.0),
    ),
    "a.masked_fill_(a < 0, 0)": (
        lambda a, b: _masked_relu_in_place(a),
        lambda a, b: a.masked_fill(a < 0, 0.0),
    ),
    "a.masked_fill(constant mask, 1)": (
        lambda a, b: a.masked_fill(_LOWER_TRIANGLE, 1.0),
        lambda a, b: a.masked_fill(_LOWER_TRIANGLE, 1.0),
    ),
    "a * (a > 0)": (lambda a, b: a * (a > 0), lambda a, b: a * (a > 0)),
    "a * torch.sign(b)": (lambda a, b: a * torch.sign(b), lambda a, b: a * torch.sign(b)),
    "a * b.signbit()": (lambda a, b: a * b.signbit(), lambda a, b: a * b.signbit()),
    "a * (a != b)": (lambda a, b: a * (a != b), lambda a, b: a * (a != b)),
    "a * a": (lambda a, b: a * a, lambda a, b: a * a.detach()),
    "a *= a": (lambda a, b: a.mul_(a), lambda a, b: a * a.detach()),
    "a.square()": (lambda a, b: a.square(), lambda a, b: a * a.detach()),
    "a.pow_(2)": (lambda a, b: a.pow_(2), lambda a, b: a * a.detach()),
    "a ** 3": (lambda a, b: a**3, lambda a, b: a * (a**2).detach()),
    "a + a.pow(2)": (lambda a, b: a + a.pow(2), lambda a, b: a + a * a.detach()),
    "StarReLU 0.8 * relu(a) ** 2 - 0.4": (
        lambda a, b: 0.8 * F.relu(a) ** 2 - 0.4,
        lambda a, b: 0.8 * F.relu(a) * F.relu(a).detach() - 0.4,
    ),
    "a * erfinv(0.9 * tanh(b))": (
        lambda a, b: a * torch.erfinv(0.9 * torch.tanh(b)),
        lambda a, b: a * torch.erfinv(0.9 * torch.tanh(b)).detach(),
    ),
    "torch.addcmul(b, a, sigmoid(b), value=0.5)": (
        lambda a, b: torch.addcmul(b, a, torch.sigmoid(b), value=0.5),
        lambda a, b: b + 0.5 * a * torch.sigmoid(b).detach(),
    ),
    "torch.addcmul(beta, alpha, a)": (
        lambda a, b: torch.addcmul(_BETA.to(a.dtype), _ALPHA.to(a.dtype), a),
        lambda a, b: _BETA.to(a.dtype) + _ALPHA.to(a.dtype) * a,
    ),
    "a.addcdiv(b, 2 + sigmoid(a))": (
        lambda a, b: a.addcdiv(b, 2.0 + torch.sigmoid(a)),
        lambda a, b: a + b / (2.0 + torch.sigmoid(a)).detach(),
    ),
    "F.fold(F.unfold(a))": (
        lambda a, b: F.fold(F.unfold(a, 3, padding=1) * 0.5, (8, 8), 3, padding=1),
        lambda a, b: F.fold(F.unfold(a, 3, padding=1) * 0.5, (8, 8), 3, padding=1),
    ),
    "a.repeat_interleave(3, dim=0)": (
        lambda a, b: a.repeat_interleave(3, dim=0).view(-1, 3, C, 8, 8).mean(1),
        lambda a, b: a,
    ),
    "tanh GELU written out": (
        lambda a, b: _tanh_gelu(a),
        lambda a, b: _rescaled(a, _tanh_gelu(a)),
    ),
    "a / (b.abs() + 1)": (
        lambda a, b: a / (b.abs() + 1.0),
        lambda a, b: a / (b.abs() + 1.0).detach(),
    ),
    "a /= b": (lambda a, b: a.div_(b), lambda a, b: a / b.detach()),
    "torch.div(1, b + 2) * a": (
        lambda a, b: torch.div(1.0, b + 2.0) * a,
        lambda a, b: a * torch.div(1.0, b + 2.0).detach(),
    ),
    "a * (1 / (b + 2))": (
        lambda a, b: a * (1 / (b + 2.0)),
        lambda a, b: a * (1 / (b + 2.0)).detach(),
    ),
    "a * (b + 2).reciprocal()": (
        lambda a, b: a * (b + 2.0).reciprocal(),
        lambda a, b: a * (b + 2.0).reciprocal().detach(),
    ),
    "sigmoid(a) / (b + 2) * a": (
        lambda a, b: torch.sigmoid(a) / (b + 2.0) * a,
        lambda a, b: a * (torch.sigmoid(a) / (b + 2.0)).detach(),
    ),
    "F.normalize(a, dim=1) + b": (
        lambda a, b: F.normalize(a, dim=1) + b,
        lambda a, b: a / a.norm(dim=1, keepdim=True).clamp_min(1e-12).detach() + b,
    ),
    "F.normalize(a, p=1, dim=-1) * b": (
        lambda a, b: F.normalize(a, p=1, dim=-1) * b,
        lambda a, b: _half_each(a / a.norm(1, -1, keepdim=True).clamp_min(1e-12).detach(), b),
    ),
    "torch.add(input=a, other=b, alpha=0.5) - 0.25": (
        lambda a, b: torch.sub(input=torch.add(input=a, other=b, alpha=0.5), other=0.25),
        lambda a, b: a + 0.5 * b - 0.25,
    ),
    "a.mT * b.mT + a.mH": (
        lambda a, b: a.mT * b.mT + a.mH,
        lambda a, b: _half_each(a.mT, b.mT) + a.mH,
    ),
    "F.pad(a, (0, 1), value=1)": (
        lambda a, b: F.pad(a, (0, 1), value=1.0),
        lambda a, b: F.pad(a, (0, 1), value=1.0),
    ),
    "F.pad(a, (1, 1, 1, 0), value=-0.5)": (
        lambda a, b: F.pad(a, (1, 1, 1, 0), value=-0.5),
        lambda a, b: F.pad(a, (1, 1, 1, 0), value=-0.5),
    ),
}


class TwoBranches(nn.Module):
    """Two convolutions of the image, ``operation`` of both, a spatial mean and a linear head.

    With ``frozen`` set, ``linearised`` replaces ``operation``: the network with its gates
    held fixed, whose gradient x input ``"none"`` must give.
    """

    def __init__(self, operation: Operation, linearised: Operation, bias: bool = True) -> None:
        super().__init__()
        self.operation, self.linearised, self.frozen = operation, linearised, False
        self.a = nn.Conv2d(3, C, 3, padding=1, bias=bias)
        self.b = nn.Conv2d(3, C, 3, padding=1, bias=bias)
        self.head = nn.Linear(C, 3, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        operation = self.linearised if self.frozen else self.operation
        return self.head(operation(self.a(x), self.b(x)).mean((2, 3)))


def _case(kind: str, **options):
    return random_case(lambda: TwoBranches(*KINDS[kind], **options))


@pytest.mark.parametrize("kind", KINDS)
def test_proportional_adds_up_and_equals_the_spec(kind: str) -> None:
    model, x, mask = _case(kind)
    assert_proportional_is_exact(model, x, mask, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_none_is_gradient_x_input_with_the_gates_held_fixed(kind: str) -> None:
    model, x, mask = _case(kind)
    assert_none_is_gradient_x_input(
        model, x, mask, 1, held_fixed(model), same_output={}, rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
@pytest.mark.parametrize(
    "kind", ["SwiGLU silu(a) * b", "torch.maximum(a, b)", "torch.where(a > 0, a, 0.5)"]
)
def test_the_zennit_attributor_equals_the_captum_class(kind: str, mode: str) -> None:
    model, x, mask = _case(kind)
    assert_zennit_equals_captum(model, x, mask, 1, mode)


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
@pytest.mark.parametrize(
    "written, module",
    [
        ("tanh GELU written out", lambda a, b: F.gelu(a, approximate="tanh")),
        ("torch.where(a > 0, a, 0.1 * a)", lambda a, b: F.leaky_relu(a, 0.1)),
        ("a.masked_fill(a < 0, 0)", lambda a, b: F.relu(a)),
        ("a.masked_fill_(a < 0, 0)", lambda a, b: F.relu(a)),
        ("a * (a > 0)", lambda a, b: F.relu(a)),
        ("torch.where(a > b, a, b)", lambda a, b: torch.stack([a, b], 1).amax(1)),
        ("torch.maximum(a, b)", lambda a, b: torch.stack([a, b], 1).amax(1)),
        ("torch.minimum(a, b)", lambda a, b: torch.stack([a, b], 1).amin(1)),
        (
            "F.pad(a, (0, 1), value=1)",
            lambda a, b: torch.cat([a, torch.ones_like(a[..., :1])], -1),
        ),
    ],
)
def test_written_out_gives_the_scores_of_what_it_stands_for(written, module, mode) -> None:
    model, x, mask = _case(written)
    reference = TwoBranches(module, module).double().eval()
    reference.load_state_dict(model.state_dict())
    expected = feature_scores(reference, x, mask, 1, mode).scores
    torch.testing.assert_close(
        feature_scores(model, x, mask, 1, mode).scores, expected, rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("mode", ["proportional", "none"])
def test_a_product_of_two_signals_gives_half_to_each_factor_by_hand(mode: str) -> None:
    """Without biases every copy of ``a`` and ``b`` is the branch of the masked image."""
    model, x, mask = _case("a * b", bias=False)
    ids = mask.unique()
    with torch.no_grad():
        a0, b0 = model.a(x), model.b(x)
        expected = []
        for feature in ids:
            part = x * (mask == feature)
            product = (model.a(part) * b0 + a0 * model.b(part)) / 2
            expected.append(model.head(product.mean((2, 3)))[:, 1])
    scores = feature_scores(model, x, mask, 1, mode)
    assert scores.ids.tolist() == ids.tolist()
    torch.testing.assert_close(scores.scores, torch.stack(expected, 1), rtol=1e-10, atol=1e-12)


class SwiGLUBlock(nn.Module):
    """A pre-norm transformer block with DINOv2's SwiGLU feed-forward on 4 x 4 patch tokens."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, width, 2, 2)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, 2, batch_first=True)
        self.w12, self.w3 = nn.Linear(width, 2 * width), nn.Linear(width, width)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        h = self.norm1(t)
        t = t + self.attention(h, h, h, need_weights=False)[0]
        x1, x2 = self.w12(self.norm2(t)).chunk(2, dim=-1)
        t = t + self.w3(F.silu(x1) * x2)
        return self.head(t.mean(1))


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
def test_a_swiglu_transformer_block_is_exact(mode: str) -> None:
    model, x, mask = random_case(SwiGLUBlock, add=True)
    if mode == "proportional":
        scores = assert_proportional_adds_up(model, x, mask, 2, rtol=1e-10, atol=1e-10)
        assert_equals_the_spec(model, x, mask, 2, scores, rtol=1e-9, atol=1e-12)
    assert_zennit_equals_captum(model, x, mask, 2, mode)


def test_float32_scores_add_up_within_rounding() -> None:
    model, x, mask = _case("SwiGLU silu(a) * b")
    model, x = model.float(), x.float()
    assert_proportional_adds_up(model, x, mask, 1, relative=1e-5)


@pytest.mark.parametrize(
    "operation, message",
    [
        (
            lambda a, b: a.add_(a.var(1, keepdim=True)),
            r"torch\.Tensor\.add_ .*adds the signal and torch\.Tensor\.var's gate-only output in "
            r"place; write it out of place",
        ),
        (
            lambda a, b: torch.where(a > 0, a, a.var(1, keepdim=True)),
            r"torch\.where .*selects between the signal and torch\.Tensor\.var's output",
        ),
        (lambda a, b: a * torch.exp(a), r"torch\.exp .*no CTC rule"),
        (lambda a, b: a.pow(b), r"torch\.Tensor\.pow .*input-dependent exponent"),
        (
            lambda a, b: a.repeat_interleave(2)[: a.numel()].view_as(a),
            r"torch\.Tensor\.repeat_interleave .*flattens the copies",
        ),
        (
            lambda a, b: a + (a > 0),
            r"torch\.Tensor\.add \(the signal and torch\.Tensor\.gt\) in the model "
            r"\(TwoBranches\): the model's output is computed from its output",
        ),
        (
            lambda a, b: (a > b).to(a.dtype),
            r"torch\.Tensor\.gt in the model \(TwoBranches\): the model's output is computed from "
            r"its output",
        ),
    ],
)
def test_what_stays_refused_says_so(operation, message: str) -> None:
    # one image and two features: 3 rows, as many as the head's outputs, whose weight must
    # not be read as a constant with one row per copy when it meets a gate-only tensor
    model = TwoBranches(operation, operation).double().eval()
    assert_refused(model, message, modes=("proportional", "none"))


def test_a_constant_that_differs_between_the_copies_is_refused() -> None:
    """A condition made outside torch from the copies' values is not the full image's."""

    def select(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        condition = torch.from_numpy(a.detach().numpy() > 0)
        return torch.where(condition, a, b)

    model = TwoBranches(select, select).double().eval()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    mask = (torch.arange(8) // 4)[None, None, :, None].expand(1, 1, 8, 8)
    with pytest.raises(UntracedOutputError, match="differs between the copies of one example"):
        CTC(model).attribute(x, 0, feature_mask=mask)


class _GateThroughLinear(nn.Module):
    """A comparison (gate-only, 2-d) through ``F.linear`` with 3 outputs, then a gate.

    With one image and two features the pass has 3 rows, as many as the weight: a weight
    computed in the forward (``weight_norm``-like, no ``nn.Parameter``) must still be read as
    a weight, not as a constant with one row per copy.
    """

    def __init__(self, computed: bool) -> None:
        super().__init__()
        self.computed = computed
        self.a = nn.Conv2d(3, C, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(3, 8))
        self.head = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x).mean((1, 2))  # (rows, 8)
        weight = self.weight * 1.0 if self.computed else self.weight
        gate = F.linear((a > 0).to(a.dtype), weight)  # (rows, 3), gate-only
        return self.head(a[:, :3] * gate)


def test_a_computed_weight_with_as_many_rows_as_the_pass_is_a_weight() -> None:
    model, x, mask = random_case(lambda: _GateThroughLinear(computed=True))
    reference, _, _ = random_case(lambda: _GateThroughLinear(computed=False))
    x, halves = x[:1], (torch.arange(8) // 4)[None, None, :, None].expand(1, 1, 8, 8)
    expected = feature_scores(reference, x, halves, 1).scores
    scores = assert_proportional_adds_up(model, x, halves, 1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(scores.scores, expected, rtol=1e-12, atol=1e-12)


def _masked_quotient(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    divisor = F.relu(b)
    return torch.where(divisor > 0, a / divisor, 0.0) + a


def test_a_quotient_masked_where_its_divisor_is_zero_has_finite_none_scores() -> None:
    """Autograd gives the branch ``torch.where`` leaves out a zero gradient times ``1 / 0``
    (NaN); the gradient shortcut of ``"none"`` then runs the pass of copies, as exact."""
    model, x, mask = random_case(lambda: TwoBranches(_masked_quotient, _masked_quotient))
    shortcut = feature_scores(model, x, mask, 1, "none").scores
    assert torch.isfinite(shortcut).all()
    copies = feature_scores(model, x, mask, 1, "none", Speedups(gradient_shortcut=False)).scores
    torch.testing.assert_close(shortcut, copies, rtol=0, atol=0)
    assert_proportional_adds_up(model, x, mask, 1, rtol=1e-10, atol=1e-10)
