"""Run any forward function as a CTC pass by intercepting the torch functions it calls.

Module hooks miss the functional calls that torchvision's DenseNet and Inception make
(``F.relu`` inside ``forward``); a :class:`~torch.overrides.TorchFunctionMode` sees every call.
:class:`CTCMode` routes each call whose arguments carry copies of the pass to the matching rule
of :class:`~ctc_plugin.ctc.rules.GatedPass`:

- affine operations with a bias (convolutions, ``linear``, ``batch_norm`` in eval mode, a
  constant added to or subtracted from the signal): the bias-free result plus shared bias;
- gates: ReLU and LeakyReLU patterns, smooth activations as rescale gates, max-pool switches;
- operations linear in the signal (pooling by averaging, reshaping, concatenation, sums of
  propagated tensors, products with constants, dropout in eval mode, ...): applied as they are.

Calls whose arguments carry no copies run untouched. Anything else that would return a
propagated tensor raises :class:`~ctc_plugin.ctc.errors.UnsupportedOperationError` naming it.
A call that reads a tensor retired by the pass (its memory scaled in place by a BatchNorm, see
:meth:`~ctc_plugin.ctc.rules.GatedPass.fold_batch_norm`) raises
:class:`~ctc_plugin.ctc.errors.RetiredTensorError`.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from ctc_plugin.ctc.boxes import Window, union_boxes, window_boxes
from ctc_plugin.ctc.errors import RetiredTensorError, UnsupportedOperationError
from ctc_plugin.ctc.rules import BatchDimensionError, GatedPass, batch_norm_affine

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
    """A readable name for a torch function or tensor method."""
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


# ---------------------------------------------------------------------------- affine handlers
def _conv_like(bias_index: int, channels_first: bool, sliding: bool = False) -> Handler:
    """Convolutions (channels first) and ``linear`` (features last): bias-free, then shared.

    ``sliding``: a convolution whose output ``o`` reads a window of inputs around
    ``o * stride - padding`` (not a transposed one); it carries the input's boxes over.
    """

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        x, weight = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
        if ctx.is_propagated(weight):
            raise UnsupportedOperationError(operation_name(func), "its weight depends on the input")
        bias = _arg(args, kwargs, bias_index, "bias")
        args, kwargs = _with_arg(args, kwargs, bias_index, "bias", None)
        bias_free = func(*args, **kwargs)
        if bias is not None and channels_first:  # align (C,) to (C, 1, ...)
            bias = bias.view(-1, *([1] * (bias_free.dim() - 2)))
        boxes = None
        if sliding and ctx.boxes(x) is not None:
            window = Window.of(
                tuple(weight.shape[2:]),
                _arg(args, kwargs, 3, "stride", 1),
                _arg(args, kwargs, 4, "padding", 0),
                _arg(args, kwargs, 5, "dilation", 1),
                weight.dim() - 2,
            )
            if window is not None:
                boxes = window_boxes(ctx.boxes(x), window, tuple(bias_free.shape[2:]))
        return ctx.affine(bias_free, bias, foldable=True, boxes=boxes)

    return handle


def _batch_norm(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    x = args[0]
    mean = _arg(args, kwargs, 1, "running_mean")
    var = _arg(args, kwargs, 2, "running_var")
    weight = _arg(args, kwargs, 3, "weight")
    bias = _arg(args, kwargs, 4, "bias")
    training = _arg(args, kwargs, 5, "training", False)
    eps = _arg(args, kwargs, 7, "eps", 1e-5)
    if training or mean is None or var is None:
        raise UnsupportedOperationError(
            "torch.nn.functional.batch_norm",
            "it normalises with batch statistics (training mode or no running statistics); "
            "call model.eval() first",
        )
    scale, shift = batch_norm_affine(mean, var, weight, bias, eps)
    shape = (-1, *([1] * (x.dim() - 2)))
    return ctx.fold_batch_norm(x, scale.view(shape), shift.view(shape))


def _add_sub(sign_other: float, reverse: bool = False) -> Handler:
    """``a + alpha*b`` / ``a - alpha*b`` (and reversed): linear, or affine with a constant."""

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        first, second = args[0], _arg(args, kwargs, 1, "other")
        alpha = kwargs.get("alpha", 1)
        if ctx.is_propagated(first) and ctx.is_propagated(second):
            boxes = _union(ctx, first, second)  # read before an in-place sum drops them
            return ctx.set_boxes(ctx.tag(func(*args, **kwargs)), boxes)
        inplace = getattr(func, "__name__", "").endswith("_") or "__i" in getattr(
            func, "__name__", ""
        )
        signal_first = ctx.is_propagated(first)
        if inplace and not signal_first:
            raise UnsupportedOperationError(
                operation_name(func), "it writes the input-dependent signal into a constant"
            )
        signal, constant = (first, second) if signal_first else (second, first)
        # result = sign_signal * signal + sign_constant * constant
        if reverse:  # rsub: other - alpha * self, with self = first
            sign_signal, sign_constant = (-alpha, 1.0) if signal_first else (1.0, -alpha)
        elif signal_first:
            sign_signal, sign_constant = 1.0, sign_other * alpha
        else:
            sign_signal, sign_constant = sign_other * alpha, 1.0
        bias = _as_bias(ctx, constant, signal, operation_name(func)) * sign_constant
        boxes = ctx.boxes(signal)
        if inplace:
            if sign_signal != 1.0:
                signal.mul_(sign_signal)
            return ctx.affine(signal, bias, boxes=boxes)
        signal = signal * sign_signal if sign_signal != 1.0 else signal.clone()
        return ctx.affine(signal, bias, boxes=boxes)

    return handle


def _union(ctx: GatedPass, first: torch.Tensor, second: torch.Tensor) -> list | None:
    """The boxes of the sum of two propagated tensors of one shape (``None`` if unknown)."""
    a, b = ctx.boxes(first), ctx.boxes(second)
    if a is None or b is None or first.shape != second.shape:
        return None
    return union_boxes(a, b)


def _as_bias(ctx: GatedPass, constant: Any, signal: torch.Tensor, name: str) -> torch.Tensor:
    """A constant operand as a bias broadcastable to the grouped (N, C, *rest) signal."""
    if isinstance(constant, numbers.Number):
        return signal.new_tensor(constant)
    if not isinstance(constant, torch.Tensor):
        raise UnsupportedOperationError(name, f"an operand of type {type(constant).__name__}")
    if constant.dim() == signal.dim() and constant.shape[0] == ctx.layout.batch:
        return ctx.layout.group(constant)
    if constant.dim() == signal.dim() and constant.shape[0] == 1:
        return constant[0]
    if constant.dim() < signal.dim():
        return constant
    raise UnsupportedOperationError(
        name, f"a constant of shape {tuple(constant.shape)} that does not broadcast per example"
    )


def _scale(divide: bool) -> Handler:
    """Products and quotients with constants are linear; of two signals they are not."""

    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        first, second = args[0], _arg(args, kwargs, 1, "other")
        if ctx.is_propagated(first) and ctx.is_propagated(second):
            raise UnsupportedOperationError(
                operation_name(func), "it multiplies two input-dependent tensors (not linear)"
            )
        if divide and not ctx.is_propagated(first):
            raise UnsupportedOperationError(
                operation_name(func), "it divides by an input-dependent tensor (not linear)"
            )
        return ctx.tag(func(*args, **kwargs))

    return handle


# ---------------------------------------------------------------------------- gate handlers
def _relu(inplace_default: bool = False) -> Handler:
    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        inplace = bool(_arg(args, kwargs, 1, "inplace", inplace_default)) or inplace_default
        return ctx.relu_gate(args[0], inplace=inplace)

    return handle


def _leaky_relu(inplace_default: bool = False) -> Handler:
    def handle(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        slope = _arg(args, kwargs, 1, "negative_slope", 0.01)
        inplace = bool(_arg(args, kwargs, 2, "inplace", inplace_default)) or inplace_default
        return ctx.leaky_relu_gate(args[0], float(slope), inplace=inplace)

    return handle


def _rescale(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    x, rest = args[0], args[1:]
    inplace = bool(kwargs.get("inplace", False)) or any(a is True for a in rest)
    # The activation runs on a clone: an in-place variant must not overwrite the signal early.
    out = ctx.rescale_gate(x, lambda t: func(t.clone(), *rest, **kwargs))
    if inplace:
        return ctx.tag(x.copy_(out))
    return out


def _max_pool(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> Any:
    wants_indices = bool(kwargs.pop("return_indices", False))
    name = getattr(func, "__name__", "")
    if len(args) > 6 and "adaptive" not in name:
        wants_indices = wants_indices or bool(args[6])
        args = args[:6]
    if "adaptive" in name and len(args) > 2:
        wants_indices = wants_indices or bool(args[2])
        args = args[:2]
    with_indices = functools.partial(_POOL_WITH_INDICES[_pool_kind(func, args[0])], **kwargs)
    window = None
    if "adaptive" not in name:
        window = Window.of(
            _arg(args, kwargs, 1, "kernel_size"),
            _arg(args, kwargs, 2, "stride", None),
            _arg(args, kwargs, 3, "padding", 0),
            _arg(args, kwargs, 4, "dilation", 1),
            args[0].dim() - 2,
        )
    out = ctx.max_pool_switches(args[0], lambda t: with_indices(t, *args[1:]), window)
    if wants_indices:
        raise UnsupportedOperationError(
            operation_name(func), "returning pooling indices to the model is not supported"
        )
    return out


def _pool_kind(func: Callable, x: torch.Tensor) -> str:
    adaptive = "adaptive" in getattr(func, "__name__", "")
    return f"{'adaptive_' if adaptive else ''}{x.dim() - 2}d"


_POOL_WITH_INDICES: dict[str, Callable[..., Any]] = {
    "1d": functools.partial(F.max_pool1d, return_indices=True),
    "2d": functools.partial(F.max_pool2d, return_indices=True),
    "3d": functools.partial(F.max_pool3d, return_indices=True),
    "adaptive_1d": functools.partial(F.adaptive_max_pool1d, return_indices=True),
    "adaptive_2d": functools.partial(F.adaptive_max_pool2d, return_indices=True),
    "adaptive_3d": functools.partial(F.adaptive_max_pool3d, return_indices=True),
}


# ---------------------------------------------------------------------------- linear handlers
def _linear(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> Any:
    out = func(*args, **kwargs)
    return tree_map(lambda t: ctx.tag(t) if isinstance(t, torch.Tensor) else t, out)


def _dropout(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    if _arg(args, kwargs, 2, "training", True):
        raise UnsupportedOperationError(
            operation_name(func), "dropout is random in training mode; call model.eval() first"
        )
    return args[0]


def _pad(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    mode = _arg(args, kwargs, 2, "mode", "constant")
    value = _arg(args, kwargs, 3, "value", None)
    if mode == "constant" and value not in (None, 0, 0.0):
        raise UnsupportedOperationError(
            operation_name(func), f"padding with the constant {value} (only 0 is linear)"
        )
    return ctx.tag(func(*args, **kwargs))


def _interpolate(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
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


def _constant_like(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> Any:
    """Factories that only read a shape, dtype or device make constants, not signals."""
    return func(*args, **kwargs)


def _setitem(ctx: GatedPass, func: Callable, args: tuple, kwargs: dict) -> None:
    target, value = args[0], args[2]
    if not (ctx.is_propagated(target) and ctx.is_propagated(value)):
        raise UnsupportedOperationError(
            operation_name(func), "it mixes a constant and the input-dependent signal in place"
        )
    func(*args, **kwargs)
    ctx.tag(target)


def _build_table() -> dict[Any, Handler]:
    T = torch.Tensor
    table: dict[Any, Handler] = {}

    def put(handler: Handler, *funcs: Any) -> None:
        for f in funcs:
            table[f] = handler

    put(_conv_like(2, channels_first=True, sliding=True), torch.conv1d, torch.conv2d, torch.conv3d)
    put(
        _conv_like(2, channels_first=True),
        torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d,
    )  # fmt: skip
    put(_conv_like(2, channels_first=False), F.linear)
    put(_batch_norm, F.batch_norm)
    put(_add_sub(1.0), torch.add, T.add, T.__add__, T.__radd__, T.add_, T.__iadd__)
    put(_add_sub(-1.0), torch.sub, T.sub, T.__sub__, T.sub_, T.__isub__, torch.subtract)
    put(_add_sub(-1.0, reverse=True), torch.rsub, T.__rsub__)
    put(_scale(False), torch.mul, T.mul, T.__mul__, T.__rmul__, T.mul_, T.__imul__)
    put(_scale(True), torch.div, T.div, T.__truediv__, T.div_, T.__itruediv__, torch.true_divide)
    put(_relu(), F.relu, torch.relu, T.relu)
    put(_relu(inplace_default=True), F.relu_, torch.relu_, T.relu_)
    put(_leaky_relu(), F.leaky_relu)
    put(_leaky_relu(inplace_default=True), F.leaky_relu_)
    put(
        _rescale,
        F.silu, F.gelu, F.hardswish, F.mish, F.elu, F.selu, F.celu, F.softplus, F.relu6,
        F.hardtanh, F.hardsigmoid, torch.sigmoid, T.sigmoid, F.sigmoid, torch.tanh, T.tanh,
        F.tanh,
    )  # fmt: skip
    put(
        _max_pool,
        F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
        F.adaptive_max_pool3d, torch.max_pool1d, torch.max_pool2d, torch.max_pool3d,
    )  # fmt: skip
    put(_dropout, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout)
    put(_pad, F.pad)
    put(_interpolate, F.interpolate)
    put(
        _linear,
        F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
        F.adaptive_avg_pool3d, torch.flatten, T.flatten, T.view, T.reshape, torch.reshape,
        T.contiguous, T.permute, torch.permute, T.transpose, torch.transpose, T.squeeze,
        torch.squeeze, T.unsqueeze, torch.unsqueeze, T.__getitem__, torch.cat, torch.concat,
        torch.concatenate, torch.stack, T.clone, torch.clone, T.to, T.float, T.double,
        T.mean, torch.mean, T.sum, torch.sum, T.__neg__, torch.neg, T.neg, T.chunk,
        torch.chunk, T.split, torch.split, T.unbind, torch.unbind, T.expand, T.expand_as,
        T.view_as, T.reshape_as, T.unflatten, torch.unflatten, T.movedim, torch.movedim,
        T.narrow, torch.narrow, F.pixel_shuffle, F.pixel_unshuffle, T.type_as, T.detach,
        T.cpu, T.cuda,
    )  # fmt: skip
    put(
        _constant_like,
        T.new_zeros, T.new_ones, T.new_full, T.new_empty, T.new_tensor, torch.zeros_like,
        torch.ones_like, torch.empty_like, torch.full_like,
    )  # fmt: skip
    put(_setitem, T.__setitem__)
    return table


_TABLE = _build_table()


class CTCMode(TorchFunctionMode):
    """A torch function mode that turns a model's forward into a CTC pass.

    Use it around a forward call on a batch whose copies were built by the CTC class::

        with CTCMode(gated_pass):
            logits = model(gated_pass.tag(batch))

    Args:
        gated_pass: The rules and state of the pass.
    """

    def __init__(self, gated_pass: GatedPass) -> None:
        super().__init__()
        self.gated_pass = gated_pass

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple = (),
        kwargs: dict | None = None,
    ) -> Any:
        """Route a call to its CTC rule when its arguments carry copies of the pass."""
        kwargs = kwargs or {}
        ctx = self.gated_pass
        leaves, _ = tree_flatten((args, kwargs))
        tags = [getattr(leaf, "_ctc_pass", None) for leaf in leaves if isinstance(leaf, Tensor)]
        if ctx.retired_token in tags:
            raise RetiredTensorError(operation_name(func))
        if ctx.token not in tags:
            return func(*args, **kwargs)
        handler = _TABLE.get(func)
        if handler is not None:
            try:
                return handler(ctx, func, args, kwargs)
            except BatchDimensionError as error:
                raise UnsupportedOperationError(operation_name(func), str(error)) from None
        out = func(*args, **kwargs)
        if not any(isinstance(leaf, torch.Tensor) for leaf in tree_flatten(out)[0]):
            return out  # sizes, dtypes, devices, ...: nothing propagates
        raise UnsupportedOperationError(operation_name(func), "no CTC rule is defined for it")
