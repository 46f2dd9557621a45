"""The handlers of the operation -> rule table: from a torch call's arguments to a CTC rule.

Each handler takes ``(gated_pass, func, args, kwargs)`` for a call whose arguments carry copies of
the pass, reads the call's arguments the way torch does (by position or keyword), and applies the
matching rule of [`GatedPass`][ctc_plugin.ctc.rules.GatedPass] (or the operation itself, for
operations linear in the signal). [`ctc_plugin.ctc.operations`][ctc_plugin.ctc.operations] says
which torch functions each handler serves; [`CTCMode`][ctc_plugin.ctc.attribution.CTCMode]
dispatches to them.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten

from ctc_plugin.ctc.copy_axis import (
    REDUCTIONS,
    attribute_name,
    follow_copy_axis,
    reduced_copy_axis,
)
from ctc_plugin.ctc.errors import (
    UnsupportedOperationError,
    constant_shape_error,
    copies_off_dim_zero,
    over_dim_zero,
)
from ctc_plugin.ctc.rules import REFUSED_ATTRIBUTE, GatedPass

Handler = Callable[[GatedPass, Callable[..., Any], tuple, dict], Any]


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    """A call's argument by position or keyword."""
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _with_arg(args: tuple, kwargs: dict, index: int, name: str, value: Any) -> tuple[tuple, dict]:
    """The call's arguments with one argument replaced (by position or keyword)."""
    if len(args) > index:
        args = (*args[:index], value, *args[index + 1 :])
    else:
        kwargs = {**kwargs, name: value}
    return args, kwargs


def operation_name(func: Callable[..., Any]) -> str:
    """A readable name for a torch function, tensor method or attribute (``x.mT``)."""
    attribute = attribute_name(func)
    if attribute is not None:  # an attribute read: x.mT, x.T, x.H
        return f"torch.Tensor.{attribute}"
    if isinstance(func, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return f"torch.ops.{func}"  # aten.gelu.default, mylib.swish
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    module = getattr(func, "__module__", None)
    if name.startswith(("TensorBase.", "Tensor.")):
        return "torch.Tensor." + name.split(".", 1)[1]
    if name.startswith("_VariableFunctionsClass."):
        return "torch." + name.split(".", 1)[1]
    if "boolean_dispatch" in name:
        return f"torch.nn.functional.{getattr(func, '__name__', 'max_pool')}"
    if module in (None, "torch._C._nn"):
        return f"torch.nn.functional.{name}"
    return f"{module}.{name}"


def is_inplace(func: Callable[..., Any]) -> bool:
    """Whether a torch function writes its result into its first argument (``add_``, ``+=``)."""
    name = getattr(func, "__name__", "")
    if name.startswith("__i") and name.endswith("__"):  # __iadd__, not __invert__
        return hasattr(torch.Tensor, "__" + name[3:])
    return name.endswith("_") and not name.endswith("__")


# ---------------------------------------------------------------------------- affine handlers
def conv_like(bias_index: int, channels_first: bool) -> Handler:
    """Convolutions (channels first) and ``linear`` (features last): bias-free, then shared."""

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        weight = _arg(args, kwargs, 1, "weight")
        if ctx.is_propagated(weight):
            raise UnsupportedOperationError(operation_name(func), "its weight depends on the input")
        bias = _arg(args, kwargs, bias_index, "bias")
        if ctx.is_propagated(bias):
            raise UnsupportedOperationError(
                operation_name(func),
                "its bias depends on the input, so it is no bias the copies can share; add it "
                "after the layer (F.linear(x, w) + b: a sum of signals)",
            )
        x = _arg(args, kwargs, 0, "input")
        if channels_first and isinstance(x, torch.Tensor) and x.dim() == weight.dim() - 1:
            raise unbatched_input_error(operation_name(func), tuple(x.shape))
        args, kwargs = _with_arg(args, kwargs, bias_index, "bias", None)
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


def _running_norm_args(args: tuple, kwargs: dict, flag: str, default: bool) -> tuple:
    """(mean, var, weight, bias, flag, eps) of ``batch_norm``/``instance_norm``'s arguments.

    Both share one signature: input, running mean and variance, weight, bias, a flag
    (``training`` or ``use_input_stats``), momentum, eps.
    """
    names = ("running_mean", "running_var", "weight", "bias")
    values = [_arg(args, kwargs, position, name) for position, name in enumerate(names, 1)]
    return (
        *values,
        _arg(args, kwargs, 5, flag, default),
        float(_arg(args, kwargs, 7, "eps", 1e-5)),
    )


def batch_norm(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """Eval-mode ``batch_norm``: the affine map ``x * scale + shift``, folded when it can be."""
    x = args[0]
    mean, var, weight, bias, training, eps = _running_norm_args(args, kwargs, "training", False)
    refuse_batch_statistics(
        "torch.nn.functional.batch_norm", training, running=mean is not None and var is not None
    )
    return ctx.running_norm(x, mean, var, weight, bias, eps)


def refuse_batch_statistics(operation: str, training: bool, running: bool) -> None:
    """Refuse a normalisation by the batch's statistics, saying what to do.

    Without running statistics (``track_running_stats=False``) it normalises by the batch's
    even in eval mode: ``model.eval()`` does not help. With them, in training mode it does.

    Raises:
        UnsupportedOperationError: Where ``training`` or not ``running``.
    """
    if not running:
        raise UnsupportedOperationError(
            operation,
            "it has no running statistics (track_running_stats=False), so even in eval mode it "
            "normalises with the statistics of the batch, which mix the examples and the copies; "
            "give it running statistics (track_running_stats=True, estimated on training data), "
            "or use a normalisation per example (GroupNorm, LayerNorm, InstanceNorm)",
        )
    if training:
        raise UnsupportedOperationError(
            operation,
            "it normalises with batch statistics in training mode; call model.eval() first",
        )


def add_or_subtract(sign_other: float, reverse: bool = False) -> Handler:
    """``a + alpha*b`` / ``a - alpha*b`` (and reversed): linear, or affine with a constant."""

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        first, second = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other")
        alpha = kwargs.get("alpha", 1)
        gate_only = _gate_only_operand(ctx, (first, second))
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
        # result = sign_signal * signal + sign_constant * constant
        if reverse:  # rsub: other - alpha * self, with self = first
            sign_signal, sign_constant = (-alpha, 1.0) if signal_first else (1.0, -alpha)
        elif signal_first:
            sign_signal, sign_constant = 1.0, sign_other * alpha
        else:
            sign_signal, sign_constant = sign_other * alpha, 1.0
        bias = _as_bias(ctx, constant, signal, operation_name(func)) * sign_constant
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


def _gate_only_operand(ctx: GatedPass, operands: tuple[Any, ...]) -> str | None:
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
    ``torch.addcmul(beta, alpha, x)``, and its ``GlobalResponseNorm``): decomposed into ``*``
    (``/``) and ``+``, which run inside a CTC mode of this pass, so each step is routed and
    marked as it would be written out (``addcmul(x, p, w)`` of a gate-only ``p`` is
    ``x + p * w``, gate-only).
    """
    from ctc_plugin.ctc.interception import CTCMode  # the mode dispatches to this module

    divide = getattr(func, "__name__", "") == "addcdiv"
    base, first, second, value = _add_product_arguments(args, kwargs)
    with CTCMode(ctx):
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
    base = _arg(args, kwargs, 0, "input")
    first, second = _arg(args, kwargs, 1, "tensor1"), _arg(args, kwargs, 2, "tensor2")
    return base, first, second, kwargs.get("value", 1)


def _as_bias(ctx: GatedPass, constant: Any, signal: torch.Tensor, name: str) -> torch.Tensor:
    """A constant operand as a bias broadcastable to the grouped (N, C, *rest) signal."""
    if isinstance(constant, numbers.Number):
        return signal.new_tensor(constant)
    if not isinstance(constant, torch.Tensor):
        raise UnsupportedOperationError(name, f"an operand of type {type(constant).__name__}")
    if constant.dim() == signal.dim() and constant.shape[0] == ctx.layout.batch:
        ctx.check_constant(constant, signal, name)
        return ctx.layout.group(constant)
    if constant.dim() == signal.dim() and constant.shape[0] == 1:
        return constant[0]
    if constant.dim() < signal.dim():
        return constant
    raise constant_shape_error(name, tuple(constant.shape), tuple(signal.shape))


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


def multiply_or_divide(divide: bool) -> Handler:
    """Products and quotients: linear with a constant, a gate with a gate tensor.

    Where one factor is a gate tensor (it came out of a squashing activation of the full pass,
    see [`GateMark`][ctc_plugin.ctc.rules.GateMark]), each copy of the other factor is
    multiplied by the gate copy's value. A product of two gate tensors is itself a gate tensor
    (of the full pass only); a signal times itself is its square (as ``pow``); a product of
    two other signals takes half from each
    ([`GatedPass.signal_product`][ctc_plugin.ctc.rules.GatedPass.signal_product]). A quotient
    by a signal is nonlinear in it, so the divisor is a gate, as a normalisation's statistic
    is: every copy of the numerator divided by the gate copy's divisor (linear attention's
    normaliser); the quotient of a gate tensor or a constant by a signal is a gate-only tensor
    of the full pass (``1 / x``).
    """

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        first, second = args[0], _arg(args, kwargs, 1, "other")
        name = operation_name(func)
        rounding = _arg(args, kwargs, 2, "rounding_mode") if divide else None
        if rounding is not None:
            raise UnsupportedOperationError(
                name, f"it rounds the quotient (rounding_mode={rounding!r}), which is not linear"
            )
        if ctx.is_propagated(first) and ctx.is_propagated(second):
            first_gate, second_gate = ctx.gate_mark(first), ctx.gate_mark(second)
            if first_gate is not None and second_gate is not None:
                return _gate_by_gate(ctx, func, first, second, kwargs)
            if second_gate is not None:
                return ctx.gate_product(first, second, divide=divide, inplace=is_inplace(func))
            if first_gate is not None and not divide and not is_inplace(func):
                return ctx.gate_product(second, first)
            if first_gate is None and divide:  # the divisor decided by the full pass
                return ctx.gate_product(first, second, divide=True, inplace=is_inplace(func))
            if first_gate is None:  # SwiGLU's silu(a) * b, or a square
                square = _same_signal(first, second)  # read before an in-place product
                product = ctx.signal_product(first, second, inplace=is_inplace(func))
                return ctx.mark_gate(product, name) if square else product  # as x.pow(2)
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
    square of one signal, as ``x.pow(2)`` (see [`power`][ctc_plugin.ctc.handlers.power]): its
    copies are the uniform rule's, and it is also a gate tensor.
    """
    return first is second or (
        first.shape == second.shape
        and first.dtype == second.dtype
        and bool(torch.equal(first, second))
    )


# ---------------------------------------------------------------------------- gate handlers
def relu(inplace_default: bool = False) -> Handler:
    """``relu``: the gate copy's activation pattern on every copy."""

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        inplace = bool(_arg(args, kwargs, 1, "inplace", inplace_default)) or inplace_default
        return ctx.relu_gate(args[0], inplace=inplace)

    return handle


def leaky_relu(inplace_default: bool = False) -> Handler:
    """``leaky_relu``: slope 1 where the gate copy was positive, the negative slope elsewhere."""

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        slope = _arg(args, kwargs, 1, "negative_slope", 0.01)
        inplace = bool(_arg(args, kwargs, 2, "inplace", inplace_default)) or inplace_default
        return ctx.leaky_relu_gate(args[0], float(slope), inplace=inplace)

    return handle


def prelu(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``F.prelu`` (``nn.PReLU``): ``leaky_relu``'s gate with the learned slope per channel."""
    x, weight = args[0], _arg(args, kwargs, 1, "weight")
    if not ctx.is_propagated(x) or ctx.is_propagated(weight):
        raise UnsupportedOperationError(
            operation_name(func), "its slope depends on the input (only a learned slope is a gate)"
        )
    return ctx.leaky_relu_gate(x, prelu_slope(weight, x))


def prelu_slope(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """PReLU's weight aligned to ``x``'s trailing dims: one slope, or one per channel (dim 1)."""
    if weight.numel() == 1:
        return weight.reshape(())
    return weight.reshape(-1, *([1] * (x.dim() - 2)))


def _signal_and_constants(
    ctx: GatedPass, func: Callable, x: Any, constants: tuple[Any, ...], what: str
) -> tuple[torch.Tensor, tuple[Any, ...]]:
    """The signal and the constant operands of an elementwise gate, aligned to the gate copy.

    Each constant is ``None``, a number, or a tensor broadcastable to the gate copy's rows of
    ``x``; a constant with one row per copy (``torch.zeros_like(x)``) gives its gate copy's
    rows.

    Raises:
        UnsupportedOperationError: ``x`` is no signal, a constant depends on the input, or a
            constant would broadcast the signal to a larger shape.
    """
    name = operation_name(func)
    if not ctx.is_propagated(x) or any(ctx.is_propagated(c) for c in constants):
        raise UnsupportedOperationError(
            name,
            f"its {what} depends on the input; only constant {what}s (numbers, parameters, "
            "buffers) make a gate of the full pass",
        )
    rows = ctx.layout.group(x)[:, 0].shape
    aligned = []
    for constant in constants:
        if isinstance(constant, torch.Tensor):
            if constant.dim() == x.dim() and constant.shape[0] == x.shape[0]:
                ctx.check_constant(constant, x, name)
                constant = ctx.layout.group(constant)[:, 0]
            if torch.broadcast_shapes(rows, constant.shape) != rows:
                raise UnsupportedOperationError(
                    name,
                    f"its {what} of shape {tuple(constant.shape)} broadcasts the signal of "
                    f"shape {tuple(x.shape)} to a larger shape; expand the signal first",
                )
        aligned.append(constant)
    return x, tuple(aligned)


def _bounds(constants: tuple[Any, ...], like: torch.Tensor) -> tuple[Any, ...]:
    """Numbers as tensors where another bound is a tensor (``torch.clamp`` takes one kind)."""
    if not any(isinstance(c, torch.Tensor) for c in constants):
        return constants
    return tuple(
        c if c is None or isinstance(c, torch.Tensor) else like.new_tensor(c) for c in constants
    )


def clamp(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``clamp``/``clip`` (``clamp_min``, ``clamp_max``, in place) with constant bounds.

    As ``hardtanh`` (``clamp(0, 6)`` is ``relu6``): a rescale gate ``y / x`` of the gate copy,
    whose output is a gate tensor where both bounds are given (``(x + 3).clamp(0, 6) / 6``
    is ``hardsigmoid``). ``clamp(min=0)`` is ``relu``'s pattern. A bound that depends on the
    input is refused.
    """
    name = getattr(func, "__name__", "")
    if name.startswith("clamp_min"):
        low, high = _arg(args, kwargs, 1, "min"), None
    elif name.startswith("clamp_max"):
        low, high = None, _arg(args, kwargs, 1, "max")
    else:
        low, high = _arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max")
    x, (low, high) = _signal_and_constants(
        ctx, func, _arg(args, kwargs, 0, "input"), (low, high), "bound"
    )
    if low is None and high is None:
        return func(*args, **kwargs)  # torch says what is missing
    inplace = is_inplace(func)
    if high is None and isinstance(low, numbers.Number) and low == 0:
        return ctx.relu_gate(x, inplace=inplace)
    origin = operation_name(func) if low is not None and high is not None else None
    return ctx.rescale_gate(
        x, lambda t: torch.clamp(t, *_bounds((low, high), t)), origin, inplace=inplace
    )


def maximum_or_minimum(largest: bool) -> Handler:
    """``torch.maximum``/``torch.minimum``: ``clamp`` by a constant, switches between signals.

    ``torch.maximum(x, torch.zeros_like(x))`` is ``relu``; the constant is a lower (upper)
    bound, a rescale gate of the gate copy as ``clamp(min=c)``. Of two input-dependent
    tensors every copy takes the operand the full image selected
    ([`GatedPass.switch`][ctc_plugin.ctc.rules.GatedPass.switch]), as
    ``torch.stack([a, b], 1).amax(1)`` does.
    """

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        first, second = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other")
        if ctx.is_propagated(first) and ctx.is_propagated(second):
            return ctx.switch(first, second, largest)
        signal, constant = (first, second) if ctx.is_propagated(first) else (second, first)
        x, (bound,) = _signal_and_constants(ctx, func, signal, (constant,), "other operand")
        pick = torch.maximum if largest else torch.minimum
        return ctx.rescale_gate(x, lambda t: pick(t, bound.to(t.dtype)))

    return handle


def where(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``torch.where``, ``Tensor.where`` and ``masked_fill``: switches the copies do not move.

    The condition is a constant or the full pass's decision (``x > 0``, a gate-only tensor);
    every copy takes its own entries of the operand selected, and a constant operand is a bias
    where it is taken ([`GatedPass.select`][ctc_plugin.ctc.rules.GatedPass.select]).
    ``masked_fill(x, mask, v)`` is ``torch.where(mask, v, x)``; in place it is written into
    ``x``. A gate-only operand beside the signal is refused.
    """
    name = operation_name(func)
    if func is torch.Tensor.where:
        chosen, condition = args[0], _arg(args, kwargs, 1, "condition")
        other = _arg(args, kwargs, 2, "other")
    elif func is torch.where:
        condition, chosen = _arg(args, kwargs, 0, "condition"), _arg(args, kwargs, 1, "input")
        other = _arg(args, kwargs, 2, "other")
    else:  # masked_fill(input, mask, value)
        other, condition = args[0], _arg(args, kwargs, 1, "mask")
        chosen = _arg(args, kwargs, 2, "value")
    gate_only = _gate_only_operand(ctx, (chosen, other))
    if gate_only is not None:
        raise UnsupportedOperationError(
            name,
            f"it selects between the signal and {gate_only}'s output, a gate tensor of the full "
            "pass that may only multiply or divide the signal, or be the condition",
        )
    out = ctx.select(condition, chosen, other, name)
    if is_inplace(func):
        return ctx.tag(args[0].copy_(out))
    return out


def decided_by_full_pass(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> Any:
    """Comparisons, signs and reciprocals of the signal: a gate-only tensor of the full image.

    ``x > 0``, ``a >= b``, ``torch.sign(x)``, ``1 / x``: computed from the gate copy's rows and
    given to every copy; it may serve as a gate (``x * (x > 0)``, ``y * (1 / x)``) or a
    condition (``torch.where(x > 0, x, 0.1 * x)``), and nothing else.
    """
    return ctx.of_full_pass(func, args, kwargs, operation_name(func))


def max_or_min(largest: bool, returns_indices: bool) -> Handler:
    """``amax``/``amin`` and ``max``/``min`` over dims of one example: the full pass's switches.

    Every copy takes its entries where the gate copy's maximum (minimum) lies
    ([`GatedPass.max_switches`][ctc_plugin.ctc.rules.GatedPass.max_switches]), as max
    pooling's switches. ``torch.max(x, dim)`` returns the gate copy's indices beside the
    values; reading them is refused. Over dim 0 (or every dim) it is refused; ``torch.max(a,
    b)`` of two tensors is ``torch.maximum``.
    """
    pairwise = maximum_or_minimum(largest)

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> Any:
        name = operation_name(func)
        x = _arg(args, kwargs, 0, "input")
        dims = _arg(args, kwargs, 1, "dim", None if returns_indices else ())
        if returns_indices and (isinstance(dims, torch.Tensor) or "other" in kwargs):
            return pairwise(ctx, func, args, kwargs)  # torch.max(a, b)
        keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
        dims = () if dims is None else (dims,) if isinstance(dims, int) else tuple(dims)
        if not dims or any(d % x.dim() == 0 for d in dims):
            raise over_dim_zero(
                name,
                "it takes the maximum or minimum",
                "x.amax(1, keepdim=True), as CBAM's spatial attention does",
            )
        values, indices = ctx.max_switches(
            x, tuple(sorted({d % x.dim() for d in dims})), keepdim, largest
        )
        if not returns_indices:
            return values
        ctx.tag(indices)
        setattr(
            indices,
            REFUSED_ATTRIBUTE,
            f"it reads the indices that {name} returned beside its values: positions the "
            "full image selected, which CTC does not pass on to the model; use the values "
            f"alone ({'amax' if largest else 'amin'}, or {name}(...)[0])",
        )
        return (torch.return_types.max if largest else torch.return_types.min)((values, indices))

    return handle


def rescale(
    gate: bool = False, inplace_default: bool = False, read_inplace: bool = True
) -> Handler:
    """Smooth elementwise activations as rescale gates ``y / x`` of the gate copy.

    With ``gate``, a squashing activation (sigmoid, hardsigmoid, tanh, hardtanh): its output
    is also a gate tensor that may multiply the signal (squeeze-excitation). With
    ``inplace_default``, the in-place variants (``x.sigmoid_()``, timm's
    ``sigmoid(x, inplace=True)``): the result is written into ``x``. With ``read_inplace``
    (torch's activations), a call's ``inplace=True`` or positional ``True`` makes it in place;
    a function registered by the user says so itself (``inplace_default``).
    """

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        x, rest = args[0], args[1:]
        inplace = inplace_default or (
            read_inplace and (bool(kwargs.get("inplace", False)) or any(a is True for a in rest))
        )
        # The activation runs on a clone: an in-place variant must not overwrite the signal.
        origin = operation_name(func) if gate else None
        return ctx.rescale_gate(
            x, lambda t: func(t.clone(), *rest, **kwargs), origin, inplace=inplace
        )

    handle.elementwise = True  # type: ignore[attr-defined]  # calls func as it is: registrable
    return handle


def softmax(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``softmax``: a gate tensor of the full pass (attention probabilities, soft gates).

    Its copies would be no linear copies of anything, so it is computed for the gate copy only
    and may serve as a gate only ([`gate_product`][ctc_plugin.ctc.rules.GatedPass.gate_product]).
    """
    return ctx.full_pass_gate(
        args[0], lambda gate: func(gate, *args[1:], **kwargs), operation_name(func)
    )


def glu(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``F.glu``: ``a * sigmoid(b)`` of the two halves, the sigmoid a gate tensor.

    Decomposed into ``chunk``, ``sigmoid`` and ``*``, all through the same rules (the
    decomposition runs inside a CTC mode of this pass): every copy of ``a`` times the gate
    copy's ``sigmoid(b)``.
    """
    from ctc_plugin.ctc.interception import CTCMode  # the mode dispatches to this module

    x = args[0]
    dim = int(_arg(args, kwargs, 1, "dim", -1))
    if x.dim() == 0 or dim % x.dim() == ctx.copy_axis(x):
        raise UnsupportedOperationError(
            operation_name(func), f"it splits dim {dim}, which holds the copies, in halves"
        )
    if x.shape[dim] % 2:
        raise ValueError(
            f"Halving dimension must be even, but dimension {dim} is size {x.shape[dim]}"
        )
    with CTCMode(ctx):
        first, second = x.chunk(2, dim)
        return first * torch.sigmoid(second)


# ---------------------------------------------------------------------------- statistics
def _input_and_rest(args: tuple, kwargs: dict) -> tuple[Any, tuple, dict]:
    """A call's input (first argument, or ``input=``/``x=``/``A=``) and its other arguments."""
    if args:
        return args[0], args[1:], kwargs
    name = next((n for n in ("input", "x", "A", "self") if n in kwargs), None)
    if name is None:
        return None, (), kwargs
    return kwargs[name], (), {key: value for key, value in kwargs.items() if key != name}


def power(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``x ** p`` (``pow``, ``square``, in place too) with a constant exponent ``p``.

    Of the signal: a smooth activation, the rescale gate ``x_0 ** (p - 1)`` on every copy
    (squared ReLU, StarReLU's ``s * relu(x) ** 2 + b``), whose output is also a gate tensor, so
    a normalisation written out may divide the signal by a function of it (``x / (x - u).pow(2)
    .mean(1).add(eps).sqrt()``: the full image's statistic). Of a gate tensor: the full pass's
    value, gate-only (a statistic; refused in place). An input-dependent exponent is refused.
    """
    name = operation_name(func)
    x, rest, rest_kwargs = _input_and_rest(args, kwargs)
    others, _ = tree_flatten((rest, rest_kwargs))
    if not ctx.is_propagated(x) or any(ctx.is_propagated(other) for other in others):
        raise UnsupportedOperationError(
            name,
            "it raises to an input-dependent exponent (only x.pow(number) is an activation of "
            "the signal)",
        )
    if ctx.gate_mark(x) is not None:
        if is_inplace(func):
            raise UnsupportedOperationError(
                name,
                "it writes a statistic of the signal (its power) into the signal in place, "
                "which the signal's other views and readers would take for a signal; write "
                "x.pow(2) (out of place)",
            )
        return ctx.statistic(x, lambda rows: func(rows, *rest, **rest_kwargs), name)
    return ctx.rescale_gate(
        x,
        lambda t: func(t.clone(), *rest, **rest_kwargs),
        gate_origin=name,
        inplace=is_inplace(func),
    )


def statistic(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``var``, ``std``, ``norm``: a statistic of the signal, gate-only.

    Computed for the full image (the gate copy) and given to every copy
    ([`GatedPass.statistic`][ctc_plugin.ctc.rules.GatedPass.statistic]), so that it may divide
    or multiply the signal as a normalisation's statistics do (as ``pow`` of a gate tensor is,
    see [`power`][ctc_plugin.ctc.handlers.power]). With an input-dependent exponent (``norm``'s
    ``p``) it is refused.
    """
    name = operation_name(func)
    x, rest, rest_kwargs = _input_and_rest(args, kwargs)
    others, _ = tree_flatten((rest, rest_kwargs))
    if not ctx.is_propagated(x) or any(ctx.is_propagated(other) for other in others):
        raise UnsupportedOperationError(
            name,
            "it raises to an input-dependent exponent (not a statistic of the signal: only "
            "x.pow(number) is one)",
        )
    return ctx.statistic(x, lambda rows: func(rows, *rest, **rest_kwargs), name)


def statistic_and_mean(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> Any:
    """``torch.var_mean``/``torch.std_mean``: the statistic gate-only, the mean linear.

    The variance (standard deviation) is the full image's, as in
    [`statistic`][ctc_plugin.ctc.handlers.statistic]; the mean is linear in the signal, so
    every copy gets its own (each copy centred on its own mean, as ``nn.LayerNorm``'s rule
    centres it). The dims must be one example's: a mean over dim 0 would mix the copies.
    """
    name = operation_name(func)
    x, rest, rest_kwargs = _input_and_rest(args, kwargs)
    dims = rest[0] if rest else rest_kwargs.get("dim")
    if dims is None or isinstance(dims, bool) or (not isinstance(dims, int) and not dims):
        dims = range(x.dim())  # every dim: torch.var_mean(x) or torch.var_mean(x, True)
    if any(d % x.dim() == 0 for d in ([dims] if isinstance(dims, int) else dims)):
        raise over_dim_zero(name, "its mean runs", "dim=1, keepdim=True, as a normalisation does")
    spread = ctx.statistic(x, lambda rows: func(rows, *rest, **rest_kwargs)[0], name)
    return spread, ctx.tag(func(x, *rest, **rest_kwargs)[1])


# ---------------------------------------------------------------------------- normalisations
def layer_norm(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``layer_norm``: each copy centred on its own mean, divided by the gate copy's spread."""
    return ctx.layer_norm(
        args[0],
        _normalized_shape(args, kwargs),
        _arg(args, kwargs, 2, "weight"),
        _arg(args, kwargs, 3, "bias"),
        float(_arg(args, kwargs, 4, "eps", 1e-5)),
    )


def rms_norm(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``rms_norm``: each copy divided by the gate copy's root mean square."""
    x = args[0]
    eps = _arg(args, kwargs, 3, "eps", None)
    eps = torch.finfo(x.dtype).eps if eps is None else float(eps)
    weight = _arg(args, kwargs, 2, "weight")
    return ctx.layer_norm(x, _normalized_shape(args, kwargs), weight, None, eps, centre=False)


def normalize(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``F.normalize``: each copy divided by the gate copy's norm (a statistic as a gate).

    ``x / max(||x||_p, eps)`` over ``dim`` is an RMSNorm without its weight: the norm is the full
    image's, so dividing by it is a gate and the result is linear in the copies (SwiftFormer adds
    its normalised queries to the signal). Swin v2's cosine attention multiplies two such
    signals: its scores are a product of two signals, which its softmax reads as a gate.
    """
    x = args[0]
    name = operation_name(func)
    p = float(_arg(args, kwargs, 1, "p", 2.0))
    dim = _arg(args, kwargs, 2, "dim", 1)
    dim = int(dim) if isinstance(dim, numbers.Integral) else tuple(int(d) for d in dim)
    eps = float(_arg(args, kwargs, 3, "eps", 1e-12))
    dims = (dim,) if isinstance(dim, int) else dim
    if x.dim() == 0 or any(d % x.dim() == ctx.copy_axis(x) for d in dims):
        raise UnsupportedOperationError(
            name, f"it normalises over dim {dim}, which holds the copies"
        )
    norm = ctx.full_pass_gate(x, lambda rows: rows.norm(p, dim, keepdim=True).clamp_min(eps), name)
    return ctx.gate_product(x, norm, divide=True)


def _normalized_shape(args: tuple, kwargs: dict) -> tuple[int, ...]:
    """``layer_norm``'s and ``rms_norm``'s ``normalized_shape`` argument as a tuple."""
    shape = _arg(args, kwargs, 1, "normalized_shape")
    return (shape,) if isinstance(shape, int) else tuple(shape)


def group_norm(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``group_norm``: per copy and group centred, divided by the gate copy's spread."""
    return ctx.group_norm(
        args[0],
        int(_arg(args, kwargs, 1, "num_groups")),
        _arg(args, kwargs, 2, "weight"),
        _arg(args, kwargs, 3, "bias"),
        float(_arg(args, kwargs, 4, "eps", 1e-5)),
    )


def instance_norm(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``instance_norm``: with running statistics an affine map, else statistics as gates."""
    x = args[0]
    mean, var, weight, bias, use_input_stats, eps = _running_norm_args(
        args, kwargs, "use_input_stats", True
    )
    if not use_input_stats:
        if mean is None or var is None:
            raise UnsupportedOperationError(
                operation_name(func), "use_input_stats=False needs running statistics"
            )
        return ctx.running_norm(x, mean, var, weight, bias, eps)
    if mean is not None or var is not None:
        raise UnsupportedOperationError(
            operation_name(func),
            "it would update its running statistics (InstanceNorm with "
            "track_running_stats=True in training mode); call model.eval() first",
        )
    return ctx.instance_norm(x, weight, bias, eps)


def max_pool(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> Any:
    """Max pooling: every copy gathered at the gate copy's argmax positions.

    An input without a channel dim (``F.max_pool2d`` of an (N, H, W) map, which torch pools as
    one image of N channels, each alone) is pooled with a channel dim of 1 added, so that each
    row (each copy) is pooled alone there too.
    """
    kwargs = dict(kwargs)  # the call's own keywords stay as they were
    wants_indices = bool(kwargs.pop("return_indices", False))
    kind = _pool_kind(func)
    if len(args) > 6 and not kind.startswith("adaptive"):
        wants_indices = wants_indices or bool(args[6])
        args = args[:6]
    if kind.startswith("adaptive") and len(args) > 2:
        wants_indices = wants_indices or bool(args[2])
        args = args[:2]
    if wants_indices:
        raise UnsupportedOperationError(
            operation_name(func), "returning pooling indices to the model is not supported"
        )
    x = args[0]
    without_channels = x.dim() == int(kind[-2]) + 1  # (N, *spatial): torch's unbatched form
    if without_channels:
        x = ctx.tag(x.unsqueeze(1))
    with_indices = functools.partial(_POOL_WITH_INDICES[kind], **kwargs)
    out = ctx.max_pool_switches(x, lambda t: with_indices(t, *args[1:]))
    return ctx.tag(out.squeeze(1)) if without_channels else out


def _pool_kind(func: Callable) -> str:
    """``"2d"``, ``"adaptive_2d"``, ...: the pooling a max-pooling function does, by its name."""
    name = getattr(func, "__name__", "")
    return f"{'adaptive_' if 'adaptive' in name else ''}{name[-2:]}"


_POOL_WITH_INDICES: dict[str, Callable[..., Any]] = {
    "1d": functools.partial(F.max_pool1d, return_indices=True),
    "2d": functools.partial(F.max_pool2d, return_indices=True),
    "3d": functools.partial(F.max_pool3d, return_indices=True),
    "adaptive_1d": functools.partial(F.adaptive_max_pool1d, return_indices=True),
    "adaptive_2d": functools.partial(F.adaptive_max_pool2d, return_indices=True),
    "adaptive_3d": functools.partial(F.adaptive_max_pool3d, return_indices=True),
}


# ---------------------------------------------------------------------------- linear handlers
def triangle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``tril``/``triu``: the entries above (below) a diagonal of the last two dims zeroed.

    Linear in every copy (causal linear attention masks its scores so), unless those dims hold
    the copies.
    """
    x = _arg(args, kwargs, 0, "input")
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
    x = _arg(args, kwargs, 0, "input")
    axis = ctx.copy_axis(x) if ctx.is_propagated(x) else 0
    if func in REDUCTIONS and ctx.is_propagated(x):  # never over the copies' dim
        moved_to = reduced_copy_axis(operation_name(func), args, kwargs, x, axis)
        if axis:
            return ctx.tag(func(*args, **kwargs), moved_to)
    if not axis:
        return ctx.linear(func, args, kwargs)
    raise copies_off_dim_zero(operation_name(func), axis)


def reshape_copies(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> Any:
    """A shape operation: applied as it is; the copies are followed to wherever they lie."""
    x = args[0]
    axis = ctx.copy_axis(x)
    out = func(*args, **kwargs)
    for leaf in tree_flatten(out)[0]:
        if isinstance(leaf, torch.Tensor):
            if not leaf.is_floating_point():  # .to(torch.int32), .type_as(a long tensor)
                raise UnsupportedOperationError(
                    operation_name(func),
                    f"it converts the signal to {leaf.dtype}, which rounds it (not linear)",
                )
            ctx.tag(leaf, follow_copy_axis(func, args, kwargs, x, axis, leaf, ctx.layout.batch))
    return out


def concatenate(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``cat``/``stack``: linear in the propagated parts; constant parts are shared biases.

    A constant concatenated to the signal (a vision transformer's class token) would otherwise
    sit whole in every copy; it is a bias like any constant added to the signal, so the result
    is the concatenation with zeros in its place plus that bias, shared among the copies.
    """
    parts = list(_arg(args, kwargs, 0, "tensors"))
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
    """Dropout in eval mode (or of ``p = 0``) is the identity; in training mode it is refused."""
    if _arg(args, kwargs, 2, "training", True) and _arg(args, kwargs, 1, "p", 0.5) > 0:
        raise UnsupportedOperationError(
            operation_name(func), "dropout is random in training mode; call model.eval() first"
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
    mode = _arg(args, kwargs, 2, "mode", "constant")
    value = _arg(args, kwargs, 3, "value", None)
    if mode != "constant" or value in (None, 0, 0.0):
        return ctx.tag(func(*args, **kwargs))
    padding = _arg(args, kwargs, 1, "pad")
    bias = func(x.new_zeros((1, *x.shape[1:])), padding, mode="constant", value=value)
    if bias.shape[0] != 1:
        raise UnsupportedOperationError(
            operation_name(func), "it pads the batch dimension, which holds the copies"
        )
    zero_padded = func(x, padding, mode="constant", value=0.0)
    return ctx.affine(zero_padded, bias[0])


def interpolate(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """Resizing by a linear interpolation mode."""
    mode = _arg(args, kwargs, 3, "mode", "nearest")
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
    """``x[i] = v`` of two propagated tensors (linear); a constant written in is refused."""
    target, value = args[0], args[2]
    if not (ctx.is_propagated(target) and ctx.is_propagated(value)):
        raise UnsupportedOperationError(
            operation_name(func), "it mixes a constant and the input-dependent signal in place"
        )
    func(*args, **kwargs)
    ctx.tag(target)
