"""Reading a torch call: its arguments, a readable name, whether it writes in place.

What every handler of the operation -> rule table, the deferral of products and the
registration of rules need to know of a call, before any rule applies.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from ctc_plugin.ctc.copy_axis import attribute_name


def arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    """A call's argument by position or keyword."""
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def with_arg(args: tuple, kwargs: dict, index: int, name: str, value: Any) -> tuple[tuple, dict]:
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
    if module == "torch._C._special" and name.startswith("special_"):  # torch.special.expit
        return f"torch.special.{name[len('special_') :]}"
    if "boolean_dispatch" in name:
        return f"torch.nn.functional.{getattr(func, '__name__', 'max_pool')}"
    if module in (None, "torch._C._nn"):
        return f"torch.nn.functional.{name}"
    return f"{module}.{_public(name, func, module)}"


def _public(name: str, func: Callable[..., Any], module: str) -> str:
    """``name`` without its leading ``_`` where the module holds ``func`` under that name too.

    ``F.threshold`` is the function ``F._threshold``: messages name what users call.
    """
    public = name[1:]
    if name.startswith("_") and not name.startswith("__") and public.isidentifier():
        if getattr(sys.modules.get(module), public, None) is func:
            return public
    return name


def is_inplace(func: Callable[..., Any]) -> bool:
    """Whether a torch function writes its result into its first argument (``add_``, ``+=``)."""
    name = getattr(func, "__name__", "")
    if name.startswith("__i") and name.endswith("__"):  # __iadd__, not __invert__
        return hasattr(torch.Tensor, "__" + name[3:])
    return name.endswith("_") and not name.endswith("__")


__all__ = ["arg", "is_inplace", "operation_name", "with_arg"]
