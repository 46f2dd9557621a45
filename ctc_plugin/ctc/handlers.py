"""The handlers of the operation -> rule table: from a torch call's arguments to a CTC rule.

Each handler takes ``(gated_pass, func, args, kwargs)`` for a call whose arguments carry copies of
the pass, reads the call's arguments the way torch does (by position or keyword), and applies the
matching rule of [`GatedPass`][ctc_plugin.ctc.rules.GatedPass] (or the operation itself, for
operations linear in the signal). [The operation -> rule table][ctc_plugin.ctc.operation_table] says
which torch functions each handler serves; [`CTCMode`][ctc_plugin.ctc.attribution.CTCMode]
dispatches to them.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from ctc_plugin.batchnorm import BATCH_NORM_TYPES
from ctc_plugin.ctc.calls import arg, is_inplace, operation_name, with_arg
from ctc_plugin.ctc.copy_axis import (
    REDUCTIONS,
    follow_copy_axis,
    reduced_copy_axis,
)
from ctc_plugin.ctc.deferred import Replay, defer
from ctc_plugin.ctc.errors import (
    UnsupportedOperationError,
    constant_shape_error,
    copies_off_dim_zero,
)
from ctc_plugin.ctc.rules import GatedPass
from ctc_plugin.ctc.sharing import unexpanded

Handler = Callable[[GatedPass, Callable[..., Any], tuple, dict], Any]


# ---------------------------------------------------------------------------- affine handlers
def conv_like(bias_index: int, channels_first: bool) -> Handler:
    """Convolutions (channels first) and ``linear`` (features last): bias-free, then shared."""

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        weight = arg(args, kwargs, 1, "weight")
        if ctx.is_propagated(weight):
            raise UnsupportedOperationError(operation_name(func), "its weight depends on the input")
        bias = arg(args, kwargs, bias_index, "bias")
        if ctx.is_propagated(bias):
            raise UnsupportedOperationError(
                operation_name(func),
                "its bias depends on the input, so it is no bias the copies can share; add it "
                "after the layer (F.linear(x, w) + b: a sum of signals)",
            )
        x = arg(args, kwargs, 0, "input")
        if channels_first and isinstance(x, torch.Tensor) and x.dim() == weight.dim() - 1:
            raise unbatched_input_error(operation_name(func), tuple(x.shape))
        args, kwargs = with_arg(args, kwargs, bias_index, "bias", None)
        bias_free = ctx.linear(func, args, kwargs)
        if bias is not None and channels_first:  # align (C,) to (C, 1, ...)
            bias = bias.view(-1, *([1] * (bias_free.dim() - 2)))
        # a BatchNorm can only follow (and fold in) where the features are dim 1
        foldable = channels_first or bias_free.dim() == 2
        return ctx.affine(bias_free, bias, foldable=foldable)

    return handle


def unbatched_input_error(operation: str, shape: tuple[int, ...]) -> ValueError:
    """The error for a convolution called on copies without a batch dimension.

    CTC stacks the copies along dim 0; a convolution that takes its input as one unbatched
    example (C, H, W) would mix them as channels. It happens when the inputs were one example
    without its batch dimension and the feature mask broadcast to it.
    """
    return ValueError(
        f"{operation} got the feature copies as one unbatched input of shape {shape}: CTC "
        "stacks its copies along dimension 0, so the model must take a batch (N, C, ...). If "
        "the inputs are one image (C, H, W) without its batch dimension, add it: "
        "x.unsqueeze(0)"
    )


def running_norm_args(args: tuple, kwargs: dict, flag: str, default: bool) -> tuple:
    """(mean, var, weight, bias, flag, eps) of ``batch_norm``/``instance_norm``'s arguments.

    Both share one signature: input, running mean and variance, weight, bias, a flag
    (``training`` or ``use_input_stats``), momentum, eps.
    """
    names = ("running_mean", "running_var", "weight", "bias")
    values = [arg(args, kwargs, position, name) for position, name in enumerate(names, 1)]
    return (
        *values,
        arg(args, kwargs, 5, flag, default),
        float(arg(args, kwargs, 7, "eps", 1e-5)),
    )


def batch_norm(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """Eval-mode ``batch_norm``: the affine map ``x * scale + shift``, folded when it can be."""
    x = args[0]
    mean, var, weight, bias, training, eps = running_norm_args(args, kwargs, "training", False)
    refuse_batch_statistics(
        "torch.nn.functional.batch_norm",
        training,
        running=mean is not None and var is not None,
        module=calling_module(),
    )
    return ctx.running_norm(x, mean, var, weight, bias, eps)


def calling_module() -> torch.nn.Module | None:
    """The module whose code made the call a handler serves (read off the stack), or ``None``."""
    from ctc_plugin.ctc.interception import running_module_object  # it dispatches to handlers

    return running_module_object()


def refuse_batch_statistics(
    operation: str, training: bool, running: bool, module: torch.nn.Module | None
) -> None:
    """Refuse a normalisation by the batch's statistics, saying what to do.

    A BatchNorm module without running statistics (``track_running_stats=False``) normalises by
    the batch's even in eval mode: ``model.eval()`` does not help; a functional call without
    them (``running_mean=None``) is told to pass them. With them, a BatchNorm in training mode
    is told to call ``model.eval()``, and any other call with ``training=True`` (a forward
    that passes it itself) that ``model.eval()`` does not change it.

    Args:
        operation: The operation's name, for the message.
        training: The call normalises by the batch's statistics (``training=True``).
        running: It was given running statistics.
        module: The module that made the call (a BatchNorm module, or ``None`` for none).

    Raises:
        UnsupportedOperationError: Where ``training`` or not ``running``.
    """
    is_batch_norm = isinstance(module, BATCH_NORM_TYPES)
    mixes = "the statistics of the batch, which mix the examples and the copies"
    if not running and is_batch_norm:
        raise UnsupportedOperationError(
            operation,
            f"it has no running statistics (track_running_stats=False), so even in eval mode it "
            f"normalises with {mixes}; give it running statistics (track_running_stats=True, "
            "estimated on training data), or use a normalisation per example (GroupNorm, "
            "LayerNorm, InstanceNorm)",
        )
    if not running:
        raise UnsupportedOperationError(
            operation,
            "it is called without running statistics (running_mean and running_var None), so "
            f"it normalises with {mixes}, in any mode; pass running statistics (buffers "
            "estimated on training data) with training=False, or use a normalisation per "
            "example (F.group_norm, F.layer_norm, F.instance_norm)",
        )
    if training:
        raise UnsupportedOperationError(
            operation,
            training_call_refusal("normalises with batch statistics", module),
        )


def training_call_refusal(what: str, module: torch.nn.Module | None) -> str:
    """Why a call with ``training=True`` is refused (``what`` it does then), and what to do.

    The call of a module in training mode (``nn.Dropout``, or ``training=self.training``) is
    told to call ``model.eval()``; one made in a module in eval mode, or outside any module,
    passes ``training=True`` itself, which ``model.eval()`` does not change.
    """
    if module is not None and module.training:
        return f"it {what} in training mode; call model.eval() first"
    return (
        f"it is called with training=True, so it {what} whatever the model's mode "
        "(model.eval() does not change it); call it with training=self.training, as torch's "
        "modules do, or leave it out"
    )


def add_or_subtract(sign_other: float, reverse: bool = False) -> Handler:
    """``a + alpha*b`` / ``a - alpha*b`` (and reversed): linear, or affine with a constant."""

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        first, second = (
            arg(args, kwargs, 0, "input"),
            arg(args, kwargs, 1, "other"),
        )
        alpha = kwargs.get("alpha", 1)
        gate_only = gate_only_operand(ctx, (first, second))
        if gate_only is not None and any(_is_signal(ctx, v) for v in (first, second)):
            return _sum_with_gate_only(ctx, func, args, kwargs, gate_only)
        if ctx.is_propagated(first) and ctx.is_propagated(second):
            return ctx.linear(func, args, kwargs)
        inplace = is_inplace(func)
        signal_first = ctx.is_propagated(first)
        if inplace and not signal_first:
            raise UnsupportedOperationError(
                operation_name(func), "it writes the input-dependent signal into a constant"
            )
        signal, constant = (first, second) if signal_first else (second, first)
        fresh = False  # whether signal is a new tensor, which the affine rule may write into
        if not inplace:  # in place, the result keeps the signal's shape (torch checks)
            broadcast = _broadcast_by(signal, constant)
            signal, fresh = broadcast, broadcast is not signal
            # and out of place, torch's type promotion: float16 copies minus a float32 buffer
            # (a normalisation in front of a float32 model) are float32, as the model computes
            promoted = torch.result_type(first, second)
            if signal.dtype != promoted:
                signal, fresh = signal.to(promoted), True
        # result = sign_signal * signal + sign_constant * constant
        if reverse:  # rsub: other - alpha * self, with self = first
            sign_signal, sign_constant = (-alpha, 1.0) if signal_first else (1.0, -alpha)
        elif signal_first:
            sign_signal, sign_constant = 1.0, sign_other * alpha
        else:
            sign_signal, sign_constant = sign_other * alpha, 1.0
        bias = unexpanded(_as_bias(ctx, constant, signal, operation_name(func))) * sign_constant
        if inplace:  # the model's x += c: x must hold the result
            if sign_signal != 1.0:
                signal.mul_(sign_signal)
            out = ctx.affine(signal, bias)
            return out if out is signal else ctx.tag(signal.copy_(out))
        # the affine rule may write into its argument, which the model may still hold
        if sign_signal != 1.0:
            signal = signal * sign_signal
        elif not fresh:
            signal = signal.clone()
        return ctx.affine(signal, bias)

    return handle


def _broadcast_by(signal: torch.Tensor, constant: Any) -> torch.Tensor:
    """``signal`` expanded to the shape a constant operand broadcasts it to (itself if none).

    ``y.mean((2, 3), keepdim=True) + position`` with a ``(1, C, H, W)`` constant: every unit
    of the result gets its own bias, so the bias-free signal must have the result's shape (its
    copies replicated, linear) for the bias to be shared unit by unit. A constant of more dims
    than the signal, or one that does not broadcast with it (a constant sized for the model's
    batch), is left to [`_as_bias`][ctc_plugin.ctc.handlers._as_bias], which refuses it.
    """
    if not isinstance(constant, torch.Tensor) or constant.dim() > signal.dim():
        return signal
    try:
        shape = torch.broadcast_shapes(signal.shape, constant.shape)
    except RuntimeError:  # sized for the model's batch, not the copies': `_as_bias` refuses it
        return signal
    return signal if shape == signal.shape else signal.expand(shape).contiguous()


def _is_signal(ctx: GatedPass, value: Any) -> bool:
    """Whether ``value`` carries copies of the signal and is no gate tensor."""
    return ctx.is_propagated(value) and ctx.gate_mark(value) is None


def gate_only_operand(ctx: GatedPass, operands: tuple[Any, ...]) -> str | None:
    """The origin of the first gate-only operand among ``operands``, ``None`` if none is."""
    for operand in operands:
        mark = ctx.gate_mark(operand)
        if mark is not None and mark.only:
            return mark.origin
    return None


def _sum_with_gate_only(
    ctx: GatedPass, func: Callable, args: tuple, kwargs: dict, origin: str
) -> torch.Tensor:
    """The signal plus a gate-only tensor: the full pass's sum, itself gate-only.

    ``x + 0.044715 * x ** 3`` inside the tanh of a GELU written out (GPT-2's, Hugging Face's
    ``NewGELUActivation``): nonlinear in the input, so no copy has a share of it; it may only
    serve as a gate, as its tanh does. Written into the signal in place it is refused.
    """
    name = operation_name(func)
    if is_inplace(func):
        raise UnsupportedOperationError(
            name,
            f"it adds the signal and {origin}'s gate-only output in place; write it out of "
            "place (y = x + s)",
        )
    return ctx.of_full_pass(func, args, kwargs, f"{name} (the signal and {origin})")


def add_product(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``addcmul``/``addcdiv``: ``input + value * tensor1 * tensor2`` (``/ tensor2``).

    The product (quotient) and the sum, each by its own rule (timm's ``Affine`` of ResMLP,
    ``torch.addcmul(beta, alpha, x)``, and its ``GlobalResponseNorm``): written out as ``*``
    (``/``) and ``+`` inside a CTC mode of this pass (the row is ``written_out``: nothing else
    of the pass looks at the call first), so each step is routed, marked and deferred as it
    would be written out (``addcmul(x, p, w)`` of a gate-only ``p`` is ``x + p * w``,
    gate-only; ``addcmul(x, sigmoid(a) * tanh(b), w)`` a sum with a product of two gate
    tensors, whose copies are computed where the model reads it as a signal). A step the rules
    refuse is refused naming the call and the step.

    Raises:
        UnsupportedOperationError: A step of the written-out form refused.
    """
    from ctc_plugin.ctc.interception import decomposed  # the mode dispatches to this module

    divide = getattr(func, "__name__", "") == "addcdiv"
    base, first, second, value = _add_product_arguments(args, kwargs)
    with decomposed(ctx, operation_name(func)):
        product = torch.div(first, second) if divide else torch.mul(first, second)
        if value != 1:
            product = torch.mul(product, value)
        return torch.add(base, product)


def _add_product_arguments(args: tuple, kwargs: dict) -> tuple[Any, Any, Any, Any]:
    """``(input, tensor1, tensor2, value)`` of an ``addcmul``/``addcdiv`` call.

    Also of the deprecated signature torch still accepts, ``addcmul(input, value, tensor1,
    tensor2)``, with the scale second.
    """
    if len(args) == 4 and isinstance(args[1], numbers.Number):
        return args[0], args[2], args[3], args[1]
    base = arg(args, kwargs, 0, "input")
    first, second = (
        arg(args, kwargs, 1, "tensor1"),
        arg(args, kwargs, 2, "tensor2"),
    )
    return base, first, second, kwargs.get("value", 1)


def _as_bias(ctx: GatedPass, constant: Any, signal: torch.Tensor, name: str) -> torch.Tensor:
    """A constant operand as a bias broadcastable to the grouped (N, C, *rest) signal.

    A constant with the signal's rows along dim 0, made from the pass's batch size, is one
    bias per copy: one row per copy, or ``m`` rows per copy where the signal merged its copies
    with the next dim (``bias.repeat(B, 1, 1)`` of a relative position bias, with ``B`` read
    from the signal, meeting ``(B * heads, L, L)``). Its rows must be the same for every copy
    of an example ([`check_constant`][ctc_plugin.ctc.rules.GatedPass.check_constant]); then it
    is the bias the model adds to each example, grouped as the signal is.
    """
    if isinstance(constant, numbers.Number):
        return signal.new_tensor(constant)
    if not isinstance(constant, torch.Tensor):
        raise UnsupportedOperationError(name, f"an operand of type {type(constant).__name__}")
    if (
        constant.dim() == signal.dim()
        and constant.shape[0] == signal.shape[0]
        and constant.shape[0] % ctx.layout.batch == 0
        and ctx.copy_axis(signal) == 0
    ):
        ctx.check_constant(constant, signal, name)
        return ctx.layout.group(constant)
    if constant.dim() == signal.dim() and constant.shape[0] == 1:
        return constant[0]
    if constant.dim() < signal.dim():
        return constant
    raise constant_shape_error(name, tuple(constant.shape), tuple(signal.shape), ctx.layout.batch)


def _gate_by_gate(
    ctx: GatedPass, func: Callable, first: torch.Tensor, second: torch.Tensor, kwargs: dict
) -> torch.Tensor:
    """A product (quotient) of two gate tensors: a gate-only tensor of the full pass's values.

    A gate tensor that is not gate-only (a sigmoid's output) carries rescaled copies of the
    signal in its other rows; the product of the full pass is computed from the gate copies'
    rows and given to every copy (``softmax(q k^T) * sigmoid(g(x))``). So is a gate tensor
    divided by a signal. In place (``mul_``), ``first`` receives it.
    """

    def full_pass(t: torch.Tensor) -> torch.Tensor:
        mark = ctx.gate_mark(t)
        if mark is not None and (mark.only or ctx.copy_axis(t)):
            return t
        return ctx.broadcast_gate(ctx.gate_rows(t), "")

    full = [full_pass(t) for t in (first, second)]
    if is_inplace(func) and full[0] is not first:
        full[0] = first.copy_(full[0])
    rest = {key: value for key, value in kwargs.items() if key != "other"}
    return ctx.mark_gate(ctx.tag(func(*full, **rest)), operation_name(func), only=True)


def _standing_for_signal_product(
    ctx: GatedPass, out: torch.Tensor, first: torch.Tensor, second: torch.Tensor, name: str
) -> torch.Tensor:
    """``out``, the full pass's product of two gate tensors that carry copies, deferred.

    Both factors came out of activations that are gates in a product (a ReLU6 or tanh output
    and a squeeze-excitation's sigmoid, an LSTM cell's input and candidate written out);
    ``first`` as it was before an in-place product wrote into it. Where
    the product serves as a gate, it is the full pass's value; where the model reads it as a
    signal (a convolution after the squeeze-excitation), its copies are those of a product of
    two signals ([`signal_product`][ctc_plugin.ctc.gate_rules.GateRules.signal_product]: half
    to each factor), computed then ([`ctc_plugin.ctc.deferred`][ctc_plugin.ctc.deferred]).
    Before, such a product could only be a gate, and a model that read it as a signal was
    refused at its output.
    """
    if ctx.copy_axis(first) or ctx.copy_axis(second):
        return out

    def copies() -> torch.Tensor:
        return ctx.signal_product(first, second)

    watched = [(first, first._version), (second, second._version)]
    return defer(out, Replay(copies, name, watched, gate=True), depth=1)


def multiply_or_divide(divide: bool) -> Handler:
    """Products and quotients: linear with a constant, a gate with a gate tensor.

    Where one factor is a gate tensor (it came out of a squashing activation of the full pass,
    see [`GateMark`][ctc_plugin.ctc.rules.GateMark]), each copy of the other factor is
    multiplied by the gate copy's value. A product of two gate tensors is itself a gate tensor
    (of the full pass only); a signal times itself is its square (as ``pow``); a product of
    two other signals takes half from each
    ([`GatedPass.signal_product`][ctc_plugin.ctc.gate_rules.GateRules.signal_product]). A quotient
    by a signal is nonlinear in it, so the divisor is a gate, as a normalisation's statistic
    is: every copy of the numerator divided by the gate copy's divisor (linear attention's
    normaliser); the quotient of a gate tensor or a constant by a signal is a gate-only tensor
    of the full pass (``1 / x``).
    """

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        first, second = args[0], arg(args, kwargs, 1, "other")
        name = operation_name(func)
        rounding = arg(args, kwargs, 2, "rounding_mode") if divide else None
        if rounding is not None:
            raise UnsupportedOperationError(
                name, f"it rounds the quotient (rounding_mode={rounding!r}), which is not linear"
            )
        if ctx.is_propagated(first) and ctx.is_propagated(second):
            first_gate, second_gate = ctx.gate_mark(first), ctx.gate_mark(second)
            if first_gate is not None and second_gate is not None:
                # tanh(h) * tanh(h) is a square, as tanh(h) ** 2: the full pass's
                deferred = not (divide or first_gate.only or second_gate.only) and not (
                    _same_signal(first, second)
                )
                # first as it is before an in-place product writes into it
                kept = (
                    ctx.tag_like(first.clone(), first) if deferred and is_inplace(func) else first
                )
                out = _gate_by_gate(ctx, func, first, second, kwargs)
                if not deferred:
                    return out
                return _standing_for_signal_product(ctx, out, kept, second, name)
            if second_gate is not None:
                return ctx.gate_product(first, second, divide=divide, inplace=is_inplace(func))
            if first_gate is not None and not divide and not is_inplace(func):
                return ctx.gate_product(second, first)
            if first_gate is None and divide:  # the divisor decided by the full pass
                return ctx.gate_product(first, second, divide=True, inplace=is_inplace(func))
            if first_gate is None:  # SwiGLU's silu(a) * b, or a square
                square = _same_signal(first, second)  # read before an in-place product
                product = ctx.signal_product(first, second, inplace=is_inplace(func))
                return ctx.mark_gate(product, name, power=True) if square else product  # x.pow(2)
            if divide:  # a gate tensor divided by a signal: the full pass's quotient
                return _gate_by_gate(ctx, func, first, second, kwargs)
            raise UnsupportedOperationError(
                name, "it writes a product with the signal into a gate tensor in place"
            )
        if divide and not ctx.is_propagated(first):  # 1 / x: nonlinear, the full pass's
            if is_inplace(func):
                raise UnsupportedOperationError(
                    name, "it writes the quotient by an input-dependent tensor into a constant"
                )
            return ctx.of_full_pass(func, args, kwargs, name)
        signal, constant = (first, second) if ctx.is_propagated(first) else (second, first)
        ctx.check_constant(constant, signal, name)
        return ctx.tag(func(*args, **kwargs))

    return handle


def _same_signal(first: torch.Tensor, second: torch.Tensor) -> bool:
    """Whether two propagated signals hold the same values: their product is a square.

    ``(x - u) * (x - u)`` computes ``x - u`` twice; equal in every copy, the product is the
    square of one signal, as ``x.pow(2)`` (see [`power`][ctc_plugin.ctc.norm_handlers.power]): its
    copies are the uniform rule's, and it is also a gate tensor.
    """
    return first is second or (
        first.shape == second.shape
        and first.dtype == second.dtype
        and bool(torch.equal(first, second))
    )


# ---------------------------------------------------------------------------- linear handlers
def triangle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``tril``/``triu``: the entries above (below) a diagonal of the last two dims zeroed.

    Linear in every copy (causal linear attention masks its scores so), unless those dims hold
    the copies.
    """
    x = arg(args, kwargs, 0, "input")
    axis = ctx.copy_axis(x)
    if x.dim() < 3 or axis >= x.dim() - 2:
        raise UnsupportedOperationError(
            operation_name(func), "its last two dims, where it zeroes a triangle, hold the copies"
        )
    out = func(*args, **kwargs)
    return ctx.tag(out, axis)


def apply_linear(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> Any:
    """An operation linear in the signal, applied as it is to all copies at once.

    Where a shape operation moved the copies off dim 0 (``torch.stack(outputs)``), only a mean
    or sum over other dims runs (an ensemble's ``torch.stack(outputs).mean(0)``), and the
    copies are followed to their dim in the result; any other operation there is refused. A
    mean or sum over the copies' dim is refused wherever they lie (``z - z.mean(0)`` would mix
    them, even where its result keeps a multiple of the pass's rows).
    """
    x = arg(args, kwargs, 0, "input")
    axis = ctx.copy_axis(x) if ctx.is_propagated(x) else 0
    if func in REDUCTIONS and ctx.is_propagated(x):  # never over the copies' dim
        moved_to = reduced_copy_axis(operation_name(func), args, kwargs, x, axis)
        if axis:
            return ctx.tag(func(*args, **kwargs), moved_to)
    if not axis:
        return ctx.linear(func, args, kwargs)
    raise copies_off_dim_zero(operation_name(func), axis)


def computed_indices_reason(dtype: torch.dtype) -> str:
    """Why an integer tensor computed in the pass (indices) cannot select from the signal."""
    return (
        f"it reads a {dtype} tensor computed in the pass (indices, such as those of topk, sort "
        "or argmax): CTC cannot follow a selection at positions that depend on the input "
        "(token pruning, a gather or index at such indices); explain the model without that "
        "selection"
    )


def is_index_tensor(value: torch.Tensor) -> bool:
    """Whether ``value`` holds integers (not floats, not booleans): indices."""
    return not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool


def reshape_copies(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> Any:
    """A shape operation: applied as it is; the copies are followed to wherever they lie."""
    x = args[0]
    if is_index_tensor(x):  # topk's indices of a gate, reshaped to gather with them
        raise UnsupportedOperationError(operation_name(func), computed_indices_reason(x.dtype))
    axis = ctx.copy_axis(x)
    pending = ctx.pending_fold(x) if func in VALUE_COPIES else None
    out = func(*args, **kwargs)
    for leaf in tree_flatten(out)[0]:
        if isinstance(leaf, torch.Tensor):
            if not leaf.is_floating_point():  # .to(torch.int32), .type_as(a long tensor)
                raise UnsupportedOperationError(
                    operation_name(func),
                    f"it converts the signal to {leaf.dtype}, which rounds it (not linear)",
                )
            ctx.tag(leaf, follow_copy_axis(func, args, kwargs, x, axis, leaf, ctx.layout.batch))
            ctx.carry_fold(pending, x, leaf)
    return out


_T = torch.Tensor
#: Shape operations that copy, convert or view their input without moving a value where the
#: result keeps the input's shape and dtype (a reshape to the same shape is the identity): a
#: BatchNorm after one still folds into the layer before.
VALUE_COPIES = frozenset(
    [
        _T.contiguous, _T.clone, torch.clone, _T.to, _T.float, _T.double, _T.type_as, _T.type,
        _T.detach, _T.cpu, _T.cuda, _T.view, _T.view_as, _T.reshape, torch.reshape,
        _T.reshape_as, _T.flatten, torch.flatten,
    ]
)  # fmt: skip


def concatenate(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``cat``/``stack``: linear in the propagated parts; constant parts are shared biases.

    A constant concatenated to the signal (a vision transformer's class token) would otherwise
    sit whole in every copy; it is a bias like any constant added to the signal, so the result
    is the concatenation with zeros in its place plus that bias, shared among the copies.
    """
    parts = list(arg(args, kwargs, 0, "tensors"))
    rest = args[1:]
    kwargs = {key: value for key, value in kwargs.items() if key != "tensors"}
    propagated = [t for t in parts if ctx.is_propagated(t)]
    source = propagated[0]
    axis = ctx.copy_axis(source)
    if any(ctx.copy_axis(t) != axis for t in propagated):
        raise UnsupportedOperationError(
            operation_name(func), "its tensors hold the copies along different dims"
        )
    constants = [t for t in parts if not ctx.is_propagated(t)]
    marks = [ctx.gate_mark(t) for t in propagated]
    if all(mark is not None and mark.only for mark in marks):  # every copy holds the full pass
        constants = []
    for constant in constants:
        ctx.check_constant(constant, source, operation_name(func))
    if constants and axis != 0:
        raise UnsupportedOperationError(
            operation_name(func), "it concatenates a constant where the copies are not along dim 0"
        )
    if not constants:
        out = func(parts, *rest, **kwargs)
        return ctx.tag(
            out, follow_copy_axis(func, args, kwargs, source, axis, out, ctx.layout.batch)
        )
    signal = func(
        [t if ctx.is_propagated(t) else torch.zeros_like(t) for t in parts], *rest, **kwargs
    )
    bias = func(
        [torch.zeros_like(t) if ctx.is_propagated(t) else t for t in parts], *rest, **kwargs
    )
    follow_copy_axis(func, args, kwargs, source, axis, signal, ctx.layout.batch)  # refuses dim 0
    return ctx.affine(signal, ctx.layout.group(bias))


def dropout(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """Dropout in eval mode (or of ``p = 0``) is the identity; in training mode it is refused.

    Raises:
        UnsupportedOperationError: ``training=True`` (``F.dropout``'s default) and ``p > 0``:
            a module in training mode is told to call ``model.eval()``, a call that passes
            ``training=True`` itself that ``model.eval()`` does not change it.
    """
    if arg(args, kwargs, 2, "training", True) and arg(args, kwargs, 1, "p", 0.5) > 0:
        raise UnsupportedOperationError(
            operation_name(func),
            training_call_refusal("drops units at random", calling_module()),
        )
    return args[0]


def pad(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """Padding: linear; a nonzero constant padded in is a bias shared among the copies.

    ``F.pad(v, (0, 1), value=1.0)`` (the column of ones linear attention appends to its values)
    is the zero-padded signal plus a constant that is ``value`` in the padding and zero
    elsewhere: the rule of any constant added to the signal
    ([`GatedPass.affine`][ctc_plugin.ctc.rules.GatedPass.affine]). Reflect, replicate and
    circular modes copy the signal's own entries: linear.
    """
    x = args[0]
    mode = arg(args, kwargs, 2, "mode", "constant")
    value = arg(args, kwargs, 3, "value", None)
    if mode != "constant" or value in (None, 0, 0.0):
        return ctx.tag(func(*args, **kwargs))
    padding = arg(args, kwargs, 1, "pad")
    bias = func(x.new_zeros((1, *x.shape[1:])), padding, mode="constant", value=value)
    if bias.shape[0] != 1:
        raise UnsupportedOperationError(
            operation_name(func), "it pads the batch dimension, which holds the copies"
        )
    zero_padded = func(x, padding, mode="constant", value=0.0)
    return ctx.affine(zero_padded, bias[0])


def interpolate(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """Resizing by a linear interpolation mode."""
    mode = arg(args, kwargs, 3, "mode", "nearest")
    if mode not in (
        "nearest",
        "nearest-exact",
        "linear",
        "bilinear",
        "bicubic",
        "trilinear",
        "area",
    ):
        raise UnsupportedOperationError(operation_name(func), f"interpolation mode {mode!r}")
    return ctx.tag(func(*args, **kwargs))


def make_constant(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> Any:
    """Factories that only read a shape, dtype or device make constants, not signals."""
    return func(*args, **kwargs)


def set_item(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> None:
    """``x[i] = v`` of two propagated tensors (linear); a constant written in is refused.

    The signal written into zeros (``out = torch.zeros_like(x); out[..., 1:] = x[..., :-1]``,
    ShiftViT's and TSM's shifts) is linear too: the zeros left around it are no bias. The
    index must keep the copies apart (``out[0] = ...`` is refused).
    """
    target, value = args[0], args[2]
    if (
        ctx.is_propagated(value)
        and isinstance(target, torch.Tensor)
        and not ctx.is_propagated(target)
        and target._base is None  # a view of zeros: the tensor it views would hold the copies
        and target.dim() == value.dim()
        and ctx.copy_axis(value) == 0
        and ctx.gate_mark(value) is None  # a gate tensor's marks would not pass on to target
        and (ctx.known_zeros(target) or not bool(target.any()))
    ):
        follow_copy_axis(
            torch.Tensor.__getitem__, args[:2], {}, target, 0, target[args[1]], ctx.layout.batch
        )
        func(*args, **kwargs)
        ctx.tag(target)
        return
    if not (ctx.is_propagated(target) and ctx.is_propagated(value)):
        raise UnsupportedOperationError(
            operation_name(func), "it mixes a constant and the input-dependent signal in place"
        )
    func(*args, **kwargs)
    ctx.tag(target)
