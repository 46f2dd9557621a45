"""The handlers of gate operations: what the full input decides nonlinearly.

ReLU and its kin, clamping, max and min (also max pooling), ``where``, softmax and GLU take
their decision (which unit is open, which element wins, which weights) from the gate copy and
apply it to every copy of the pass. Like [`ctc_plugin.ctc.handlers`][ctc_plugin.ctc.handlers],
each takes ``(gated_pass, func, args, kwargs)``;
the operation -> rule table ([the table][ctc_plugin.ctc.operation_table]) lists
the torch functions each serves.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten, tree_unflatten

from ctc_plugin.ctc.calls import arg, is_inplace, operation_name
from ctc_plugin.ctc.errors import UnsupportedOperationError, over_dim_zero
from ctc_plugin.ctc.handlers import (
    Handler,
    calling_module,
    gate_only_operand,
    training_call_refusal,
)
from ctc_plugin.ctc.rules import REFUSED_ATTRIBUTE, GatedPass


# ---------------------------------------------------------------------------- gate handlers
def relu(inplace_default: bool = False) -> Handler:
    """``relu``: the gate copy's activation pattern on every copy."""

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        inplace = bool(arg(args, kwargs, 1, "inplace", inplace_default)) or inplace_default
        return ctx.relu_gate(args[0], inplace=inplace)

    return handle


def leaky_relu(inplace_default: bool = False) -> Handler:
    """``leaky_relu``: slope 1 where the gate copy was positive, the negative slope elsewhere."""

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        slope = arg(args, kwargs, 1, "negative_slope", 0.01)
        inplace = bool(arg(args, kwargs, 2, "inplace", inplace_default)) or inplace_default
        return ctx.leaky_relu_gate(args[0], float(slope), inplace=inplace)

    return handle


def rrelu(inplace_default: bool = False) -> Handler:
    """``rrelu`` in eval mode: ``leaky_relu``'s gate with the mean slope ``(lower + upper) / 2``.

    That is what torch computes in eval mode (``nn.RReLU``); in training mode it draws each
    negative slope at random, and is refused.

    Raises:
        UnsupportedOperationError: ``training=True``.
    """

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        lower = float(arg(args, kwargs, 1, "lower", 1.0 / 8))
        upper = float(arg(args, kwargs, 2, "upper", 1.0 / 3))
        if arg(args, kwargs, 3, "training", False):
            raise UnsupportedOperationError(
                operation_name(func),
                training_call_refusal("draws its negative slopes at random", calling_module()),
            )
        # F.rrelu's fifth argument is inplace; torch.rrelu's is a generator
        inplace = inplace_default or (
            func is F.rrelu and bool(arg(args, kwargs, 4, "inplace", False))
        )
        return ctx.leaky_relu_gate(args[0], (lower + upper) / 2, inplace=inplace)

    return handle


def prelu(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``F.prelu`` (``nn.PReLU``): ``leaky_relu``'s gate with the learned slope per channel."""
    x, weight = args[0], arg(args, kwargs, 1, "weight")
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
        low, high = arg(args, kwargs, 1, "min"), None
    elif name.startswith("clamp_max"):
        low, high = None, arg(args, kwargs, 1, "max")
    else:
        low, high = arg(args, kwargs, 1, "min"), arg(args, kwargs, 2, "max")
    x, (low, high) = _signal_and_constants(
        ctx, func, arg(args, kwargs, 0, "input"), (low, high), "bound"
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
    ([`GatedPass.switch`][ctc_plugin.ctc.gate_rules.GateRules.switch]), as
    ``torch.stack([a, b], 1).amax(1)`` does.
    """

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        first, second = (
            arg(args, kwargs, 0, "input"),
            arg(args, kwargs, 1, "other"),
        )
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
    where it is taken ([`GatedPass.select`][ctc_plugin.ctc.gate_rules.GateRules.select]).
    ``masked_fill(x, mask, v)`` is ``torch.where(mask, v, x)``; in place it is written into
    ``x``. A gate-only operand beside the signal is refused.
    """
    name = operation_name(func)
    if func is torch.Tensor.where:
        chosen, condition = args[0], arg(args, kwargs, 1, "condition")
        other = arg(args, kwargs, 2, "other")
    elif func is torch.where:
        condition, chosen = (
            arg(args, kwargs, 0, "condition"),
            arg(args, kwargs, 1, "input"),
        )
        other = arg(args, kwargs, 2, "other")
    else:  # masked_fill(input, mask, value)
        other, condition = args[0], arg(args, kwargs, 1, "mask")
        chosen = arg(args, kwargs, 2, "value")
    gate_only = gate_only_operand(ctx, (chosen, other))
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
    ([`GatedPass.max_switches`][ctc_plugin.ctc.gate_rules.GateRules.max_switches]), as max
    pooling's switches. ``torch.max(x, dim)`` returns the gate copy's indices beside the
    values; reading them is refused. Over dim 0 (or every dim: ``x.max()``, whose refusal
    points an input check at ``(x >= 0).all()``) it is refused; ``torch.max(a, b)`` of two
    tensors is ``torch.maximum``.
    """
    pairwise = maximum_or_minimum(largest)

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> Any:
        name = operation_name(func)
        x = arg(args, kwargs, 0, "input")
        dims = arg(args, kwargs, 1, "dim", None if returns_indices else ())
        if returns_indices and (isinstance(dims, torch.Tensor) or "other" in kwargs):
            return pairwise(ctx, func, args, kwargs)  # torch.max(a, b)
        keepdim = bool(arg(args, kwargs, 2, "keepdim", False))
        dims = () if dims is None else (dims,) if isinstance(dims, int) else tuple(dims)
        if not dims:  # x.max(): the batch's, mixing the examples (an input check, often)
            raise UnsupportedOperationError(
                name,
                "it takes the maximum or minimum over dim 0 and every other dim (dim 0 holds "
                "the examples and their feature copies); for an input check compare instead, "
                "assert (x >= 0).all(), which CTC takes (the full images decide it), and for a "
                "statistic of each example give its dims (x.amax((1, 2, 3), keepdim=True))",
            )
        if any(d % x.dim() == 0 for d in dims):
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

    Where ``f(0) != 0`` (sigmoid, softplus), ``(y - f(0)) / x``, with ``f(0)`` a shared bias
    ([`rescale_gate`][ctc_plugin.ctc.gate_rules.GateRules.rescale_gate]).

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
        rest, kwargs = _constant_arguments(ctx, func, args, kwargs, registered=not read_inplace)
        # The activation runs on a clone: an in-place variant must not overwrite the signal.
        origin = operation_name(func) if gate else None

        def activation(t: torch.Tensor) -> torch.Tensor:
            clone = t.clone()
            result = func(clone, *rest, **kwargs)
            return clone if result is None else result  # a custom operator that writes only

        return ctx.rescale_gate(x, activation, origin, inplace=inplace)

    handle.elementwise = True  # type: ignore[attr-defined]  # calls func as it is: registrable
    return handle


def _constant_arguments(
    ctx: GatedPass, func: Callable, args: tuple, kwargs: dict, registered: bool
) -> tuple[tuple, dict]:
    """The arguments after the signal of a rescale gate's call, tensors aligned to the gate copy.

    A rescale gate computes its activation of one signal, the first argument: the gate copy's
    rows go in, and a constant tensor with one row per copy (``torch.ones_like(x)``) gives its
    gate copy's rows (`_signal_and_constants`).

    Raises:
        UnsupportedOperationError: The first argument is no signal, or another one is (a
            function of two signals, ``torch.atan2(a(x), b(x))``, registered like an
            activation), naming the function and saying its other arguments must be constants.
    """
    x = args[0]
    leaves, spec = tree_flatten((args[1:], kwargs))
    if not ctx.is_propagated(x) or any(ctx.is_propagated(leaf) for leaf in leaves):
        where = (
            "another argument carries the feature copies too"
            if ctx.is_propagated(x)
            else "the feature copies are in another argument than the first"
        )
        raise UnsupportedOperationError(
            operation_name(func),
            f"{'a rule given with register_rule' if registered else 'its rule'} takes one "
            f"signal argument, its first, and here {where}; other arguments must be constants "
            "(numbers, parameters, buffers). A function of two signals needs a row of its own in "
            "the table (the architecture page's 'How to support a new operation')",
        )
    at = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    _, aligned = _signal_and_constants(ctx, func, x, tuple(leaves[i] for i in at), "other argument")
    for i, constant in zip(at, aligned):
        leaves[i] = constant
    return tree_unflatten(leaves, spec)


def softmax(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``softmax``: a gate tensor of the full pass (attention probabilities, soft gates).

    Its copies would be no linear copies of anything, so it is computed for the gate copy only
    and may serve as a gate only
    ([`gate_product`][ctc_plugin.ctc.gate_rules.GateRules.gate_product]).
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
    from ctc_plugin.ctc.interception import decomposed  # the mode dispatches to this module

    x = args[0]
    dim = int(arg(args, kwargs, 1, "dim", -1))
    if x.dim() == 0 or dim % x.dim() == ctx.copy_axis(x):
        raise UnsupportedOperationError(
            operation_name(func), f"it splits dim {dim}, which holds the copies, in halves"
        )
    if x.shape[dim] % 2:
        raise ValueError(
            f"Halving dimension must be even, but dimension {dim} is size {x.shape[dim]}"
        )
    with decomposed(ctx, operation_name(func)):
        first, second = x.chunk(2, dim)
        return first * torch.sigmoid(second)


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
