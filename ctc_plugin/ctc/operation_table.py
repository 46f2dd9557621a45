"""The operation -> rule table: the one place where CTC supports a torch operation.

Each [`OperationRule`][ctc_plugin.ctc.operation_table.OperationRule] row of `ROWS` names the
torch functions it serves, the handler ([`ctc_plugin.ctc.handlers`][ctc_plugin.ctc.handlers])
that reads their arguments and applies a rule of [`GatedPass`][ctc_plugin.ctc.rules.GatedPass],
and what the rule does, in words. A CTC pass looks its calls up through
[`rule_for`][ctc_plugin.ctc.operations.rule_for], which also consults the rules registered from
the user's code. The error for an operation without a row
([`UnsupportedOperationError`][ctc_plugin.UnsupportedOperationError]) lists the kinds of this table
([`supported_summary`][ctc_plugin.ctc.operation_table.supported_summary]), and the table on the
docs page "How CTC works" is
[`rules_table_markdown`][ctc_plugin.ctc.operation_table.rules_table_markdown] (a test keeps them
equal; ``python -m ctc_plugin.ctc.operations`` prints it).

To support a new operation in the package: write a handler (or reuse one) and add its functions
to a row, or a new row, in `_rows`; then regenerate the docs table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ctc_plugin.ctc import attention as a
from ctc_plugin.ctc import gate_handlers as g
from ctc_plugin.ctc import handlers as h
from ctc_plugin.ctc import norm_handlers as n
from ctc_plugin.ctc import recurrent as r
from ctc_plugin.ctc.calls import operation_name
from ctc_plugin.ctc.handlers import Handler
from ctc_plugin.inputs import FUNCTIONAL_DROPOUTS


@dataclass(frozen=True)
class OperationRule:
    """One row of the table: torch functions that share a CTC rule.

    Attributes:
        kind: The kind of rule (rows of one kind are listed together in error messages).
        rule: What the rule does to the copies, in one sentence (Markdown, for the docs).
        handler: Reads a call's arguments and applies the rule.
        functions: The torch functions and tensor methods the row serves.
        takes_gate_only: The handler accepts a gate-only tensor (a softmax output, see
            [`GateMark`][ctc_plugin.ctc.rules.GateMark]) among its operands and uses it as a gate.
        keeps_gate: Applied to gate tensors (and constants) only, the result is a gate tensor
            too: reshaping, pooling, products with and sums of constants. Rows that mix a gate
            into the signal path (convolutions, normalisations, activations) make signals.
        follows_copies: A shape operation that follows the copies wherever they lie
            ([`ctc_plugin.ctc.copy_axis`][ctc_plugin.ctc.copy_axis]); every other operation needs
            them along dim 0.
        from_gate_copy: The handler computes a gate-only result from the gate copy's rows and
            gives it to every copy, which is also right (and cheaper) for gate-only operands;
            other operations of gate-only operands alone are computed as they are (see
            [`CTCMode`][ctc_plugin.ctc.interception.CTCMode]).
        makes_gate: Its result is a gate tensor whatever its operands (a softmax, a squashing
            activation, a comparison, a statistic): a product of two signals whose copies are
            deferred ([`ctc_plugin.ctc.deferred`][ctc_plugin.ctc.deferred]) is read as the full
            pass's value there, and the deferral ends.
        trailing_dims: For a rule whose action is confined to the last dims of its input,
            how many (from the call's arguments): 0 for elementwise operations, 1 for
            ``linear``, the normalised dims for ``layer_norm``. Where a shape operation moved
            the copies off dim 0 to a dim before those (OpenAI CLIP's sequence-first
            transformer: ``(L, N, D)``), the rule runs with the copies moved back to dim 0;
            ``None``: such a rule needs the copies along dim 0.
        written_out: The handler writes the call out in operations of the table (``baddbmm``
            as ``@``, ``*`` and ``+``), each routed by its own row, before anything else of
            the pass looks at it: the call scores, defers products of two signals and refuses
            exactly as the model written out would, and the other flags do not apply.
        gate_as_signal: The handler may read a gate tensor that carries copies (a sigmoid's
            output) as its signal beside gate-only operands (attention probabilities times
            values ``sigmoid(v)``): its result is what the handler marks it, not gate-only
            because a gate-only operand took part.
    """

    kind: str
    rule: str
    handler: Handler
    functions: tuple[Any, ...]
    takes_gate_only: bool = False
    keeps_gate: bool = False
    follows_copies: bool = False
    from_gate_copy: bool = False
    makes_gate: bool = False
    trailing_dims: Callable[[tuple, dict], int] | None = None
    written_out: bool = False
    gate_as_signal: bool = False

    @property
    def names(self) -> list[str]:
        """Short names of the functions (``conv2d``, ``+``, ``x[i]``), without repeats."""
        return list(dict.fromkeys(short_name(f) for f in self.functions))


#: Kinds of rules, in table order, with the phrase the error message lists them by.
KINDS: dict[str, str] = {
    "affine": "convolutions, linear layers and BatchNorm in eval mode (biases shared)",
    "normalisation": (
        "LayerNorm, GroupNorm, InstanceNorm, RMSNorm and F.normalize, also written out with pow, "
        "square, var, std or norm (statistics as gates)"
    ),
    "gate": (
        "ReLU/LeakyReLU/PReLU/RReLU (eval mode), clamp, abs, comparisons, where, maximum, and "
        "max pooling or a max over dims of one example (gates of the full pass)"
    ),
    "rescale": "smooth elementwise activations (rescale gates)",
    "gate tensor": (
        "products with a gate tensor: sigmoid, hardsigmoid, tanh, softsign, erf, clamp or "
        "softmax outputs (squeeze-excitation, gated units, recurrent layers); products of two "
        "signals (SwiGLU)"
    ),
    "attention": (
        "attention (scaled_dot_product_attention, nn.MultiheadAttention, matmul/einsum/baddbmm "
        "of queries and keys: the full pass's probabilities applied to every copy's values)"
    ),
    "linear": "residual adds, average pooling, products with constants and dropout in eval mode",
    "reshaping": "reshaping, permuting, indexing and concatenation that keep the copies apart",
}


_T = torch.Tensor
_MAX_POOLS = (
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, torch.max_pool1d,
    torch.max_pool2d, torch.max_pool3d,
)  # fmt: skip
_SQUASHING = (
    F.relu6, F.hardtanh, F.hardsigmoid, torch.sigmoid, _T.sigmoid, F.sigmoid, torch.special.expit,
    torch.tanh, _T.tanh, F.tanh, torch.erf, _T.erf, torch.special.erf, torch.erfc, _T.erfc,
    torch.special.erfc, F.softsign,
)  # fmt: skip
_IN_PLACE_SQUASHING = (
    torch.sigmoid_, _T.sigmoid_, torch.tanh_, _T.tanh_, F.hardtanh_, torch.erf_, _T.erf_,
    torch.erfc_, _T.erfc_,
)  # fmt: skip
_CLAMPS = (
    torch.clamp, _T.clamp, torch.clamp_, _T.clamp_, torch.clip, _T.clip, torch.clip_, _T.clip_,
    torch.clamp_min, _T.clamp_min, torch.clamp_min_, _T.clamp_min_, torch.clamp_max,
    _T.clamp_max, torch.clamp_max_, _T.clamp_max_,
)  # fmt: skip
_POWERS = (
    torch.pow, _T.pow, _T.__pow__, _T.pow_, _T.__ipow__, torch.square, _T.square, _T.square_,
)  # fmt: skip
_STATISTICS = (
    torch.var, _T.var, torch.std, _T.std, torch.norm, _T.norm, torch.linalg.vector_norm,
    torch.linalg.norm,
)  # fmt: skip
_LINEAR_OPERATIONS = (
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, _T.mean, torch.mean, _T.sum, torch.sum,
    torch.neg, _T.neg, F.pixel_shuffle, F.pixel_unshuffle, F.unfold, F.fold,
    torch.channel_shuffle,
)  # fmt: skip
_SHAPE_OPERATIONS = (
    torch.flatten, _T.flatten, _T.view, _T.reshape, torch.reshape, _T.contiguous, _T.permute,
    torch.permute, _T.transpose, torch.transpose, _T.swapaxes, torch.swapaxes, _T.swapdims,
    torch.swapdims, _T.squeeze, torch.squeeze, _T.unsqueeze, torch.unsqueeze, _T.__getitem__,
    _T.clone, torch.clone, _T.to, _T.float, _T.double, _T.chunk, torch.chunk, _T.split,
    torch.split, _T.unbind, torch.unbind, _T.expand, _T.expand_as, _T.view_as, _T.reshape_as,
    _T.unflatten, torch.unflatten, _T.movedim, torch.movedim, _T.moveaxis, torch.moveaxis,
    _T.narrow, torch.narrow, _T.roll, torch.roll, _T.flip, torch.flip, _T.type_as, _T.detach,
    _T.cpu, _T.cuda, _T.__iter__, _T.t, torch.t, _T.repeat, _T.type, torch.repeat_interleave,
    _T.unfold,
    _T.repeat_interleave, _T.mT.__get__, _T.mH.__get__, _T.T.__get__, _T.H.__get__,
)  # fmt: skip
_CONCATENATIONS = (torch.cat, torch.concat, torch.concatenate, torch.stack)
_CONSTANT_FACTORIES = (
    _T.new_zeros, _T.new_ones, _T.new_full, _T.new_empty, _T.new_tensor, torch.zeros_like,
    torch.ones_like, torch.empty_like, torch.full_like,
)  # fmt: skip


def _elementwise(args: tuple, kwargs: dict) -> int:
    """An elementwise operation acts on no dim of its own."""
    return 0


def _last_dim(args: tuple, kwargs: dict) -> int:
    """``linear`` acts on the last dim."""
    return 1


def _normalised_dims(args: tuple, kwargs: dict) -> int:
    """``layer_norm`` and ``rms_norm`` act on the dims of ``normalized_shape``."""
    return len(n.normalized_shape(args, kwargs))


_SUMS = (
    "sums of propagated tensors are linear (residual adds); a constant added to the signal is a "
    "bias shared among the copies (e.g. `(x - mean) / std` in the model; a per-head bias "
    "repeated to the batch with the heads merged into it, `bias.repeat(B, 1, 1)` meeting "
    "`(B * heads, L, d)`, is one bias per example); the signal plus a "
    "gate-only tensor (`x + 0.044715 * x ** 3` inside a GELU written out) is a gate-only tensor "
    "of the full pass"
)

_MAXIMUM = (
    "with a constant: as `clamp` by it (`torch.maximum(x, torch.zeros_like(x))` is `relu`); of "
    "two signals: every copy takes the operand the gate copy selected (switches, as "
    "`torch.stack([a, b], 1).amax(1)`)"
)
_COMPARISONS = (
    torch.gt, _T.gt, _T.__gt__, torch.greater, _T.greater, torch.lt, _T.lt, _T.__lt__,
    torch.less, _T.less, torch.ge, _T.ge, _T.__ge__, torch.greater_equal, _T.greater_equal,
    torch.le, _T.le, _T.__le__, torch.less_equal, _T.less_equal, torch.eq, _T.eq, _T.__eq__,
    torch.ne, _T.ne, _T.__ne__, torch.not_equal, _T.not_equal, torch.sign, _T.sign,
    torch.signbit, _T.signbit, _T.__rdiv__, torch.reciprocal, _T.reciprocal, torch.isfinite,
    _T.isfinite, torch.isnan, _T.isnan, torch.isinf, _T.isinf, torch.isposinf, _T.isposinf,
    torch.isneginf, _T.isneginf,
)  # fmt: skip
_WHERE = (torch.where, _T.where, _T.masked_fill, _T.masked_fill_, torch.masked_fill)
_ABS = "the gate copy's sign on every copy (`abs(x) = sign(x) · x`, 0 where `x = 0`)"
_REDUCED_MAX = (
    "over dims of one example (`x.amax(1, keepdim=True)`, CBAM's `torch.max(x, 1, "
    "keepdim=True)[0]`): every copy gathered at the gate copy's argmax (argmin) over them, as "
    "max pooling's switches; over dim 0 it is refused, and so is reading the indices "
    "`max`/`min` return; `torch.max(a, b)` is `torch.maximum`"
)


def _rows() -> list[OperationRule]:
    T = torch.Tensor
    return [
        OperationRule(
            "affine",
            "bias-free result + the bias shared among the copies",
            h.conv_like(2, channels_first=True),
            (torch.conv1d, torch.conv2d, torch.conv3d),
        ),
        OperationRule(
            "affine",
            "bias-free result + the bias shared among the copies",
            h.conv_like(2, channels_first=True),
            (torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d),
        ),
        OperationRule(
            "affine",
            "bias-free result + the bias shared among the copies",
            h.conv_like(2, channels_first=False),
            (F.linear,),
            trailing_dims=_last_dim,
        ),
        OperationRule(
            "affine",
            "`x · scale + shift` from the running statistics; the shift is a shared bias, "
            "folded into a preceding biased layer (training mode is refused)",
            h.batch_norm,
            (F.batch_norm,),
        ),
        OperationRule(
            "affine",
            _SUMS,
            h.add_or_subtract(1.0),
            (torch.add, T.add, T.__add__, T.__radd__, T.add_, T.__iadd__),
            takes_gate_only=True,
            keeps_gate=True,
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "affine",
            _SUMS,
            h.add_or_subtract(-1.0),
            (torch.sub, T.sub, T.__sub__, T.sub_, T.__isub__, torch.subtract),
            takes_gate_only=True,
            keeps_gate=True,
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "affine",
            _SUMS,
            h.add_or_subtract(-1.0, reverse=True),
            (torch.rsub, T.__rsub__),
            takes_gate_only=True,
            keeps_gate=True,
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "normalisation",
            "each copy centred on its own mean, divided by the gate copy's standard deviation "
            "and multiplied by the weight; the shift is a shared bias",
            n.layer_norm,
            (F.layer_norm, torch.layer_norm),
            trailing_dims=_normalised_dims,
        ),
        OperationRule(
            "normalisation",
            "as `layer_norm`, per group of channels",
            n.group_norm,
            (F.group_norm, torch.group_norm),
        ),
        OperationRule(
            "normalisation",
            "as `layer_norm`, per channel over positions; with running statistics (eval mode) "
            "as `batch_norm`",
            n.instance_norm,
            (F.instance_norm,),
        ),
        *(
            [
                OperationRule(
                    "normalisation",
                    "each copy divided by the gate copy's root mean square, times the weight",
                    n.rms_norm,
                    (F.rms_norm,),
                    trailing_dims=_normalised_dims,
                )
            ]
            if hasattr(F, "rms_norm")
            else []
        ),
        OperationRule(
            "normalisation",
            "`F.normalize`: each copy divided by the gate copy's norm (SwiftFormer's queries; Swin "
            "v2's cosine attention multiplies two of them, a product of two signals)",
            n.normalize,
            (F.normalize,),
        ),
        OperationRule(
            "normalisation",
            "a statistic of the signal (`x.var(-1)`, `x.std(-1)`, `torch.norm(x, dim=(1, 2))`): "
            "a gate-only tensor computed for the gate copy, which, with what is computed from "
            "it alone (`+ eps`, `sqrt`, `rsqrt`, a mean), may only divide or multiply the "
            "signal (normalisations written out); over dim 0 it is refused",
            n.statistic,
            _STATISTICS,
            makes_gate=True,
        ),
        OperationRule(
            "normalisation",
            "`x ** p` with a constant exponent: a rescale gate (every copy times the gate "
            "copy's `x ** (p - 1)`: squared ReLU, StarReLU) whose output is also a gate tensor, "
            "so a normalisation written out (`(x - u).pow(2).mean(1)`, then `+ eps`, `sqrt`) "
            "may divide the signal by what it computes; of a gate tensor: a gate-only tensor of "
            "the full pass; an input-dependent exponent is refused",
            n.power,
            _POWERS,
            trailing_dims=_elementwise,
            makes_gate=True,
        ),
        OperationRule(
            "normalisation",
            "the variance (standard deviation) as `var`, the mean of every copy its own (linear)",
            n.statistic_and_mean,
            (torch.var_mean, torch.std_mean),
            makes_gate=True,
        ),
        OperationRule(
            "gate",
            "the gate copy's activation pattern `1[x > 0]` on every copy",
            g.relu(),
            (F.relu, torch.relu, T.relu),
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "gate",
            "the gate copy's activation pattern `1[x > 0]` on every copy",
            g.relu(inplace_default=True),
            (F.relu_, T.relu_),  # torch.relu_ is F.relu_
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "gate",
            "slope 1 where the gate copy is positive, the negative slope elsewhere",
            g.leaky_relu(),
            (F.leaky_relu,),
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "gate",
            "slope 1 where the gate copy is positive, the negative slope elsewhere",
            g.leaky_relu(inplace_default=True),
            (F.leaky_relu_,),
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "gate",
            "in eval mode as `leaky_relu` with the mean slope `(lower + upper) / 2` (`nn.RReLU`, "
            "as torch computes it there); in training mode refused (random slopes)",
            g.rrelu(),
            (F.rrelu, torch.rrelu),
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "gate",
            "in eval mode as `leaky_relu` with the mean slope `(lower + upper) / 2` (`nn.RReLU`, "
            "as torch computes it there); in training mode refused (random slopes)",
            g.rrelu(inplace_default=True),
            (torch.rrelu_,),  # F.rrelu_ is torch.rrelu_
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "gate",
            "as `leaky_relu`, with the learned slope of each channel (`nn.PReLU`)",
            g.prelu,
            (F.prelu, T.prelu),
        ),
        OperationRule(
            "gate",
            "with constant bounds, as `hardtanh`: every copy multiplied by `y / x` of the gate "
            "copy, and with both bounds the output is a gate tensor (`clamp(0, 6)` is `relu6`, "
            "`(x + 3).clamp(0, 6) / 6` is `hardsigmoid`; `clamp(min=0)` is `relu`'s pattern); "
            "a bound that depends on the input is refused",
            g.clamp,
            _CLAMPS,
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "gate",
            _MAXIMUM,
            g.maximum_or_minimum(largest=True),
            (torch.maximum, T.maximum),
            keeps_gate=True,
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "gate",
            _MAXIMUM,
            g.maximum_or_minimum(largest=False),
            (torch.minimum, T.minimum),
            keeps_gate=True,
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "gate",
            "comparisons, signs and reciprocals of the signal (`x > 0`, `a >= b`, "
            "`torch.sign(x)`, `1 / x`, `torch.isfinite(x)`): what the full image decides, a "
            "gate-only tensor computed for the gate copy that may serve as a gate "
            "(`x * (x > 0)`, `y * (1 / x)`) or a condition",
            g.decided_by_full_pass,
            _COMPARISONS,
            from_gate_copy=True,
            trailing_dims=_elementwise,
            makes_gate=True,
        ),
        OperationRule(
            "gate",
            "with a condition fixed by the full pass (`x > 0`) or a constant: every copy takes "
            "its own entries of the operand selected, and a constant operand is a bias shared "
            "where it is taken (`torch.where(x > 0, x, 0.1 * x)`, `x.masked_fill(x < 0, 0)`); a "
            "condition carried by the copies is refused",
            g.where,
            _WHERE,
            takes_gate_only=True,
            keeps_gate=True,
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "gate",
            _ABS,
            g.rescale(),
            (torch.abs, T.abs, torch.absolute, T.absolute),
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "gate",
            _ABS,
            g.rescale(inplace_default=True),
            (torch.abs_, T.abs_, T.absolute_),
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "gate",
            "every copy gathered at the gate copy's argmax positions (switches), window by "
            "window where windows are merged into the batch (SAM 2's HieraDet pools its "
            "queries so)",
            g.max_pool,
            _MAX_POOLS,
        ),
        OperationRule(
            "gate",
            _REDUCED_MAX,
            g.max_or_min(largest=True, returns_indices=False),
            (torch.amax, T.amax),
        ),
        OperationRule(
            "gate",
            _REDUCED_MAX,
            g.max_or_min(largest=False, returns_indices=False),
            (torch.amin, T.amin),
        ),
        OperationRule(
            "gate",
            _REDUCED_MAX,
            g.max_or_min(largest=True, returns_indices=True),
            (torch.max, T.max),
        ),
        OperationRule(
            "gate",
            _REDUCED_MAX,
            g.max_or_min(largest=False, returns_indices=True),
            (torch.min, T.min),
        ),
        OperationRule(
            "rescale",
            "every copy multiplied by `y / x` of the gate copy (0 where `x = 0`); where "
            "`f(0) != 0` (`softplus`), by `(y - f(0)) / x`, and `f(0)` is a bias shared among the "
            "copies; the gate copy gets the exact activation",
            g.rescale(),
            (F.silu, F.gelu, F.hardswish, F.mish, F.elu, F.selu, F.celu, F.softplus),
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "gate tensor",
            "rescale gates, and the output is a *gate tensor* that may multiply the signal",
            g.rescale(gate=True),
            _SQUASHING,
            trailing_dims=_elementwise,
            makes_gate=True,
        ),
        OperationRule(
            "gate tensor",
            "rescale gates, and the output is a *gate tensor* that may multiply the signal",
            g.rescale(gate=True, inplace_default=True),
            _IN_PLACE_SQUASHING,
            trailing_dims=_elementwise,
            makes_gate=True,
        ),
        OperationRule(
            "gate tensor",
            "the first half times the `sigmoid` of the second (a gate tensor), as `a * "
            "sigmoid(b)`; split along the copies' dim it is refused",
            g.glu,
            (F.glu,),
        ),
        OperationRule(
            "gate tensor",
            "a gate tensor of the full pass only: it may multiply the signal and nothing else",
            g.softmax,
            (F.softmax, torch.softmax, T.softmax),
            from_gate_copy=True,
            makes_gate=True,
        ),
        OperationRule(
            "gate tensor",
            "with a constant: linear; with a gate tensor: every copy of the signal times the "
            "gate copy's value (squeeze-excitation, `x * sigmoid(x)`); a signal times itself "
            "(`(x - u) * (x - u)`, equal values): its square, as `pow`; two other "
            "signals (SwiGLU's `silu(a) * b`): half of the product to each factor's copies, "
            "`(a_k b_0 + a_0 b_k) / 2` (AttnLRP's uniform rule); two gate tensors (a ReLU6 "
            "output and a squeeze-excitation's sigmoid): the full pass's product where it "
            "multiplies the signal, a product of two signals where it is read as one",
            h.multiply_or_divide(divide=False),
            (torch.mul, T.mul, T.__mul__, T.__rmul__, T.mul_, T.__imul__, torch.multiply),
            takes_gate_only=True,
            keeps_gate=True,
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "gate tensor",
            "`input + value · tensor1 · tensor2` (`/ tensor2`), written out as `*` (`/`) and "
            "`+`, each by its own rule (ResMLP's `Affine`); where the written-out form is "
            "refused, so is the call",
            h.add_product,
            (torch.addcmul, _T.addcmul, torch.addcdiv, _T.addcdiv),
            written_out=True,
        ),
        OperationRule(
            "gate tensor",
            "by a constant or a gate tensor, as `*`; by a signal: every copy divided by the "
            "gate copy's divisor (a gate, as a normalisation's statistic); a constant or a gate "
            "tensor divided by a signal is a gate-only tensor of the full pass; a rounded "
            "quotient (`rounding_mode`) is refused",
            h.multiply_or_divide(divide=True),
            (torch.div, T.div, T.__truediv__, T.div_, T.__itruediv__, torch.true_divide),
            takes_gate_only=True,
            keeps_gate=True,
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "gate tensor",
            "`nn.LSTM`, step by step: the pre-activations `W x + U h + b` affine (the bias, and "
            "`U h_0` of a constant initial state, shared), the input, forget and output gates "
            "`sigmoid(.)` of the gate copy multiplying every copy, the cell candidate and "
            "`tanh(c)` rescale gates, `f · c_0` of a constant initial cell a shared bias (LRP's "
            "signal-take-all); packed sequences and dropout between layers in training mode "
            "are refused",
            r.recurrent,
            (torch.lstm,),
            follows_copies=True,  # sequence-first input: the copies along dim 1
        ),
        OperationRule(
            "gate tensor",
            "`nn.GRU`, step by step: the reset and update gates `r`, `z` `sigmoid(.)` of the "
            "gate copy (their pre-activations affine), the candidate's pre-activation "
            "`W_in x + b_in + r · (W_hn h + b_hn)` affine with the gate copy's `r` multiplying "
            "every copy's `W_hn h` (`r · b_hn`, and `r · W_hn h_0` of a constant initial state, "
            "a shared bias), its `tanh` a rescale gate, `(1 - z) · n + z · h` products with the "
            "gate copy's `z` (`z · h_0` of a constant initial state a shared bias; LRP's "
            "signal-take-all); packed sequences and dropout between layers in training mode are "
            "refused",
            r.recurrent,
            (torch.gru,),
            follows_copies=True,  # sequence-first input: the copies along dim 1
        ),
        OperationRule(
            "gate tensor",
            "`nn.RNN`, step by step: the pre-activation `W_ih x + b_ih + W_hh h + b_hh` affine "
            "(the biases, and `W_hh h_0` of a constant initial state, shared), `tanh` a rescale "
            "gate, `relu` the gate copy's ReLU pattern; packed sequences and dropout between "
            "layers in training mode are refused",
            r.recurrent,
            (torch.rnn_tanh, torch.rnn_relu),
            follows_copies=True,  # sequence-first input: the copies along dim 1
        ),
        OperationRule(
            "attention",
            "with a constant or a gate tensor: linear in the signal (`attention @ values`); "
            "with no other signal, a sigmoid or tanh of the signal is the signal, as a linear "
            "layer reads it (`sigmoid(h) @ w`, `attention @ sigmoid(v)`), while a power of "
            "the signal stays a statistic (`(x - u).pow(2) @ w`, as under a mean); of two signals "
            "(`queries @ keys^T`): a gate-only tensor computed for the gate copy, whose copies "
            "take the uniform rule `(a_k b_0 + a_0 b_k) / 2`, computed when the model reads it "
            "as a signal (factorised and linear attention); a product over the copies' "
            "dimension is refused",
            a.matrix_product,
            (
                torch.matmul,
                _T.matmul,
                _T.__matmul__,
                _T.__rmatmul__,
                torch.mm,
                _T.mm,
                torch.mv,
                _T.mv,
                torch.bmm,
                _T.bmm,
            ),
            takes_gate_only=True,
            from_gate_copy=True,
            gate_as_signal=True,
        ),
        OperationRule(
            "attention",
            "`beta · input + alpha · (batch1 @ batch2)` (`addbmm`: the products summed over "
            "dim 0), written out as `@`, `*` and `+`, each by its own rule: a relative position "
            "bias added to attention logits (`torch.baddbmm(bias, q, k^T, alpha=scale)`) is "
            "part of the gate, `addmm(b, x, w)` a linear layer whose bias is shared; where the "
            "written-out form is refused, so is the call; in place (`baddbmm_`) it is refused",
            a.add_matrix_product,
            (
                torch.baddbmm,
                _T.baddbmm,
                torch.addbmm,
                _T.addbmm,
                torch.addmm,
                _T.addmm,
                torch.addmv,
                _T.addmv,
            ),
            written_out=True,
        ),  # fmt: skip
        OperationRule(
            "attention",
            "as `matmul`; the signal's first index must lead the output",
            a.einsum,
            (torch.einsum,),
            takes_gate_only=True,
            from_gate_copy=True,
            gate_as_signal=True,
        ),
        OperationRule(
            "attention",
            "written out as the `einsum` it computes (`a`'s kept dims, then `b`'s): "
            "`tensordot(h, w, dims=1)` is a linear layer without bias",
            a.tensordot,
            (torch.tensordot,),
            written_out=True,
        ),
        OperationRule(
            "attention",
            "`softmax(q k^T * scale + mask)` of the gate copy (a gate) times every copy's "
            "values (grouped-query keys and values repeated to the query's heads, "
            "`enable_gqa`); dropout is refused",
            a.scaled_dot_product_attention,
            (F.scaled_dot_product_attention,),
            takes_gate_only=True,
        ),
        OperationRule(
            "attention",
            "decomposed into `linear` (biases shared), reshapes and "
            "`scaled_dot_product_attention`; the attention weights it returns are gate-only; "
            "`add_bias_kv`'s learned key and value rows and `add_zero_attn`'s zeros are "
            "concatenated to the keys and values, as torch appends them (constants: a value "
            "row is a bias shared among the copies, a key row part of the gate); `static_k` "
            "and `static_v` (per example and head) are refused",
            a.multi_head_attention,
            (F.multi_head_attention_forward,),
            follows_copies=True,  # its inputs are sequence-first: the copies along dim 1
        ),
        OperationRule(
            "linear",
            "applied as it is",
            h.apply_linear,
            _LINEAR_OPERATIONS,
            keeps_gate=True,
        ),
        OperationRule(
            "reshaping",
            "applied as it is; the copies may move from dim 0 or merge with the next dims "
            "(window partitions) and are followed there, but an operation that would select, "
            "slice, split or reorder them is refused, as is a conversion to an integer or "
            "boolean dtype (it rounds)",
            h.reshape_copies,
            _SHAPE_OPERATIONS,
            keeps_gate=True,
            follows_copies=True,
        ),
        OperationRule(
            "reshaping",
            "concatenation of propagated tensors; a constant among them (a class token) is a "
            "bias shared among the copies",
            h.concatenate,
            _CONCATENATIONS,
            keeps_gate=True,
            follows_copies=True,
        ),
        OperationRule(
            "linear",
            "zeroing a triangle of the last two dims (causal masks), unless they hold the copies",
            h.triangle,
            (torch.tril, _T.tril, _T.tril_, torch.triu, _T.triu, _T.triu_),
            keeps_gate=True,
            follows_copies=True,
        ),
        OperationRule(
            "linear",
            "the identity in eval mode (refused in training mode: random)",
            h.dropout,
            FUNCTIONAL_DROPOUTS,
            keeps_gate=True,
            trailing_dims=_elementwise,
        ),
        OperationRule(
            "linear",
            "padding with zeros, or reflecting or replicating the signal; a nonzero constant "
            "padded in (`F.pad(v, (0, 1), value=1.0)`) is a bias shared among the copies",
            h.pad,
            (F.pad,),
            keeps_gate=True,
        ),
        OperationRule(
            "linear",
            "nearest, linear, bilinear, bicubic, trilinear and area modes",
            h.interpolate,
            (F.interpolate,),
            keeps_gate=True,
        ),
        OperationRule(
            "linear",
            "writing one propagated tensor into another, or into zeros (a shift: `out = "
            "torch.zeros_like(x); out[..., 1:] = x[..., :-1]`); a constant written in is "
            "refused",
            h.set_item,
            (T.__setitem__,),
        ),
        OperationRule(
            "linear",
            "constants shaped like the signal (not signals themselves)",
            h.make_constant,
            _CONSTANT_FACTORIES,
        ),
    ]


#: Shape operations whose other tensor argument is a template: only its shape, dtype or device
#: is read (``pos.expand_as(x)``, ``gate.type_as(x)``, ``mask.to(x)``). What they return is the
#: first tensor reshaped or cast: a constant stays a constant, a gate tensor a gate tensor.
TEMPLATE_FUNCTIONS: frozenset[Any] = frozenset(
    (_T.expand_as, _T.view_as, _T.reshape_as, _T.type_as, _T.to)
)

#: Factories of zeros. What they make outside the copies is noted as known zero (see
#: [`GatedPass.note_zeros`][ctc_plugin.ctc.rules.GatedPass.note_zeros]): ``nn.LSTM``, ``nn.GRU``
#: and ``nn.RNN`` start from ``torch.zeros`` states, which a rule can then take as zero without
#: reading them back (on a GPU a wait for the device at every layer call).
ZERO_FACTORIES: frozenset[Any] = frozenset((torch.zeros, torch.zeros_like, torch.Tensor.new_zeros))

#: Questions about the model's own batch that torch's modules ask of the signal (whether a
#: padding mask is left-aligned: ``nn.TransformerEncoder``'s check for its nested-tensor fast
#: path, asked before it looks for a torch function mode). They are answered for the gate
#: copy's rows, the model's batch, which the mask they take is sized for.
MODEL_BATCH_QUERIES: frozenset[Any] = frozenset((torch._nested_tensor_from_mask_left_aligned,))

#: Tensor methods that take a tensor's values out of torch (to numpy, Python lists or numbers).
#: Called on the copies they are recorded (and named should the output not be traced); a
#: gradient pass cannot follow them ([`left_torch`][ctc_plugin.ctc.rules.GatedPass.left_torch]).
EXIT_FUNCTIONS: frozenset[Any] = frozenset(
    (
        torch.Tensor.numpy, torch.Tensor.__array__, torch.Tensor.tolist, torch.Tensor.item,
        torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__,
        torch.Tensor.__complex__, torch.Tensor.__bool__,
    )
)  # fmt: skip

ROWS: tuple[OperationRule, ...] = tuple(_rows())

#: Sums and differences (``+``, ``-``, ``add_``, ...): where the signal meets a deferred product
#: of two signals in one (relative position terms added to attention scores), the deferral goes
#: on ([`ctc_plugin.ctc.deferred`][ctc_plugin.ctc.deferred]).
SUMS: frozenset[Any] = frozenset(f for row in ROWS if row.rule == _SUMS for f in row.functions)
_BY_FUNCTION: dict[Any, OperationRule] = {f: row for row in ROWS for f in row.functions}


def table_row(func: Callable[..., Any]) -> OperationRule | None:
    """The table's row serving a torch function (registered rules aside), or ``None``."""
    return _BY_FUNCTION.get(func)


_OPERATORS = {
    "__add__": "+", "__radd__": "+", "__iadd__": "+=", "__sub__": "-", "__rsub__": "-",
    "__isub__": "-=", "__mul__": "*", "__rmul__": "*", "__imul__": "*=", "__truediv__": "/",
    "__itruediv__": "/=", "__idiv__": "/=", "__neg__": "-x", "__getitem__": "x[i]",
    "__setitem__": "x[i] = v", "__matmul__": "@", "__rmatmul__": "@", "__iter__": "iter(x)",
    "special_erf": "special.erf", "special_erfc": "special.erfc",
}  # fmt: skip


def short_name(func: Callable[..., Any]) -> str:
    """A function's name as the docs table shows it: ``conv2d``, ``+``, ``x[i]``."""
    name = operation_name(func).rsplit(".", 1)[-1]
    return _OPERATORS.get(name, name)


@functools.cache
def supported_summary() -> str:
    """The kinds of operations CTC supports, as the error message lists them."""
    return "; ".join(KINDS.values())


def rules_table_markdown() -> str:
    """The table on the docs page "How CTC works", generated from `ROWS`."""
    merged: list[tuple[str, str, list[str]]] = []  # consecutive rows of one kind and rule
    for row in ROWS:
        if merged and merged[-1][:2] == (row.kind, row.rule):
            merged[-1][2].extend(n for n in row.names if n not in merged[-1][2])
        else:
            merged.append((row.kind, row.rule, row.names))
    lines = ["| kind | operations | rule |", "|---|---|---|"]
    for kind, rule, names in merged:
        lines.append(f"| {kind} | {', '.join(f'`{name}`' for name in names)} | {rule} |")
    return "\n".join(lines) + "\n"
