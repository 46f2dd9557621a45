"""The handlers of statistics and normalisations: what a normalisation takes as its gates.

A statistic of the signal (a mean, a variance, a norm, ``x ** p``) is decided by the full input:
the gate copy's value is the gate and every copy is rescaled by it (the rules'
[`rescale_gate`][ctc_plugin.ctc.gate_rules.GateRules.rescale_gate]); the normalisations (LayerNorm,
RMSNorm, GroupNorm, InstanceNorm, ``F.normalize``) divide by such a statistic of the gate copy.
Like [`ctc_plugin.ctc.handlers`][ctc_plugin.ctc.handlers], each takes
``(gated_pass, func, args, kwargs)``; the operation -> rule table
([the table][ctc_plugin.ctc.operation_table]) lists the torch functions each serves.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from ctc_plugin.ctc.calls import arg, is_inplace, operation_name
from ctc_plugin.ctc.errors import UnsupportedOperationError, over_dim_zero
from ctc_plugin.ctc.handlers import running_norm_args
from ctc_plugin.ctc.rules import GatedPass


# ---------------------------------------------------------------------------- statistics
def _input_and_rest(args: tuple, kwargs: dict) -> tuple[Any, tuple, dict]:
    """A call's input (first argument, or ``input=``/``x=``/``A=``) and its other arguments."""
    if args:
        return args[0], args[1:], kwargs
    name = next((n for n in ("input", "x", "A", "self") if n in kwargs), None)
    if name is None:
        return None, (), kwargs
    return kwargs[name], (), {key: value for key, value in kwargs.items() if key != name}


def _with_constant_arguments(
    ctx: GatedPass, name: str, args: tuple, kwargs: dict, refusal: str
) -> tuple[Any, tuple, dict]:
    """A call's input and its other arguments.

    Refused with ``refusal`` unless the input is the propagated signal and the other arguments
    are constants (an exponent, dims).
    """
    x, rest, rest_kwargs = _input_and_rest(args, kwargs)
    others, _ = tree_flatten((rest, rest_kwargs))
    if not ctx.is_propagated(x) or any(ctx.is_propagated(other) for other in others):
        raise UnsupportedOperationError(name, refusal)
    return x, rest, rest_kwargs


def power(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``x ** p`` (``pow``, ``square``, in place too) with a constant exponent ``p``.

    Of the signal: a smooth activation, the rescale gate ``x_0 ** (p - 1)`` on every copy
    (squared ReLU, StarReLU's ``s * relu(x) ** 2 + b``), whose output is also a gate tensor, so
    a normalisation written out may divide the signal by a function of it (``x / (x - u).pow(2)
    .mean(1).add(eps).sqrt()``: the full image's statistic). Of a gate tensor: the full pass's
    value, gate-only (a statistic; refused in place). An input-dependent exponent is refused.
    """
    name = operation_name(func)
    x, rest, rest_kwargs = _with_constant_arguments(
        ctx, name, args, kwargs, "it raises to an input-dependent exponent (only x.pow(number) "
        "is an activation of the signal)",
    )  # fmt: skip
    if ctx.gate_mark(x) is not None:
        if is_inplace(func):
            raise UnsupportedOperationError(
                name,
                "it writes a statistic of the signal (its power) into the signal in place, "
                "which the signal's other views and readers would take for a signal; write "
                "x.pow(2) (out of place)",
            )
        return ctx.statistic(x, lambda rows: func(rows, *rest, **rest_kwargs), name)
    out = ctx.rescale_gate(
        x, lambda t: func(t.clone(), *rest, **rest_kwargs), inplace=is_inplace(func)
    )
    return ctx.mark_gate(out, name, power=True)  # a statistic once reduced (`GateMark.power`)


def statistic(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``var``, ``std``, ``norm``: a statistic of the signal, gate-only.

    Computed for the full image (the gate copy) and given to every copy
    ([`GatedPass.statistic`][ctc_plugin.ctc.rules.GatedPass.statistic]), so that it may divide
    or multiply the signal as a normalisation's statistics do (as ``pow`` of a gate tensor is,
    see [`power`][ctc_plugin.ctc.norm_handlers.power]). With an input-dependent exponent (``norm``'s
    ``p``) it is refused.
    """
    name = operation_name(func)
    x, rest, rest_kwargs = _with_constant_arguments(
        ctx, name, args, kwargs, "it raises to an input-dependent exponent (not a statistic of "
        "the signal: only x.pow(number) is one)",
    )  # fmt: skip
    return ctx.statistic(x, lambda rows: func(rows, *rest, **rest_kwargs), name)


def statistic_and_mean(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> Any:
    """``torch.var_mean``/``torch.std_mean``: the statistic gate-only, the mean linear.

    The variance (standard deviation) is the full image's, as in
    [`statistic`][ctc_plugin.ctc.norm_handlers.statistic]; the mean is linear in the signal, so
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
        normalized_shape(args, kwargs),
        arg(args, kwargs, 2, "weight"),
        arg(args, kwargs, 3, "bias"),
        float(arg(args, kwargs, 4, "eps", 1e-5)),
    )


def rms_norm(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``rms_norm``: each copy divided by the gate copy's root mean square."""
    x = args[0]
    eps = arg(args, kwargs, 3, "eps", None)
    eps = torch.finfo(x.dtype).eps if eps is None else float(eps)
    weight = arg(args, kwargs, 2, "weight")
    return ctx.layer_norm(x, normalized_shape(args, kwargs), weight, None, eps, centre=False)


def normalize(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``F.normalize``: each copy divided by the gate copy's norm (a statistic as a gate).

    ``x / max(||x||_p, eps)`` over ``dim`` is an RMSNorm without its weight: the norm is the full
    image's, so dividing by it is a gate and the result is linear in the copies (SwiftFormer adds
    its normalised queries to the signal). Swin v2's cosine attention multiplies two such
    signals: its scores are a product of two signals, which its softmax reads as a gate.
    """
    x = args[0]
    name = operation_name(func)
    p = float(arg(args, kwargs, 1, "p", 2.0))
    dim = arg(args, kwargs, 2, "dim", 1)
    dim = int(dim) if isinstance(dim, numbers.Integral) else tuple(int(d) for d in dim)
    eps = float(arg(args, kwargs, 3, "eps", 1e-12))
    dims = (dim,) if isinstance(dim, int) else dim
    if x.dim() == 0 or any(d % x.dim() == ctx.copy_axis(x) for d in dims):
        raise UnsupportedOperationError(
            name, f"it normalises over dim {dim}, which holds the copies"
        )
    norm = ctx.full_pass_gate(x, lambda rows: rows.norm(p, dim, keepdim=True).clamp_min(eps), name)
    return ctx.gate_product(x, norm, divide=True)


def normalized_shape(args: tuple, kwargs: dict) -> tuple[int, ...]:
    """``layer_norm``'s and ``rms_norm``'s ``normalized_shape`` argument as a tuple."""
    shape = arg(args, kwargs, 1, "normalized_shape")
    return (shape,) if isinstance(shape, int) else tuple(shape)


def group_norm(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``group_norm``: per copy and group centred, divided by the gate copy's spread."""
    return ctx.group_norm(
        args[0],
        int(arg(args, kwargs, 1, "num_groups")),
        arg(args, kwargs, 2, "weight"),
        arg(args, kwargs, 3, "bias"),
        float(arg(args, kwargs, 4, "eps", 1e-5)),
    )


def instance_norm(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``instance_norm``: with running statistics an affine map, else statistics as gates."""
    x = args[0]
    mean, var, weight, bias, use_input_stats, eps = running_norm_args(
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
