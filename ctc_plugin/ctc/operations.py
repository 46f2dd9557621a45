"""Which rule CTC applies to a torch function: the table's, or one registered from your code.

A CTC pass looks up every torch function it sees called with copies among its arguments with
[`rule_for`][ctc_plugin.ctc.operations.rule_for]: first in the table
([`ctc_plugin.ctc.operation_table`][ctc_plugin.ctc.operation_table]), then among the rules given
with [`register_rule`][ctc_plugin.ctc.operations.register_rule]. An elementwise activation without
a row that computes what one of the table computes (``silu``, ``tanh``) takes that activation's
rule there, from the user's own code; ``python -m ctc_plugin.ctc.operations`` prints the table.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ctc_plugin.ctc import gate_handlers as g
from ctc_plugin.ctc.calls import is_inplace, operation_name
from ctc_plugin.ctc.operation_table import OperationRule, rules_table_markdown, table_row

#: What `register_rule` gave to functions of the user's (consulted after the table): the row
#: and the registration's handle.
_REGISTERED: dict[Any, tuple[OperationRule, RegisteredRule]] = {}
_REGISTERING = threading.Lock()


def rule_for(func: Callable[..., Any]) -> OperationRule | None:
    """The row serving a torch function, or ``None`` when CTC has no rule for it."""
    row = table_row(func)
    if row is not None:
        return row
    registered = _REGISTERED.get(func)
    return None if registered is None else registered[0]


@dataclass(frozen=True, eq=False)
class RegisteredRule:
    """What [`register_rule`][ctc_plugin.ctc.operations.register_rule] did; ``remove()`` undoes it.

    Also a context manager that removes the rule when its block ends. Each registration is its
    own handle: removing one twice, or after another registration of the same function, leaves
    the other one in place.

    Attributes:
        function: The function that took a rule.
        like: The function of the table whose rule it took.
        forms: Every callable the pass sees that the registration covers: ``function`` and
            its other forms (``torch.atan`` also covers ``x.atan()`` and ``x.atan_()``; a custom
            operator covers its overloads).
    """

    function: Any
    like: Any
    forms: tuple[Any, ...] = ()

    def remove(self) -> None:
        """Take the rule away again (nothing happens if it is gone already)."""
        with _REGISTERING:
            for form in self.forms:
                registered = _REGISTERED.get(form)
                if registered is not None and registered[1] is self:
                    del _REGISTERED[form]

    def __enter__(self) -> RegisteredRule:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def _is_operator(function: object) -> bool:
    """Whether ``function`` is an operator: ``torch.ops`` packet or overload, or a custom op."""
    kinds = (
        torch._library.custom_ops.CustomOpDef,
        torch._ops.OpOverloadPacket,
        torch._ops.OpOverload,
    )
    return isinstance(function, kinds)


def _packet(operator: Any) -> Any:
    """The ``torch.ops`` packet of an operator (`_is_operator`)."""
    if isinstance(operator, torch._library.custom_ops.CustomOpDef):
        return operator._opoverload.overloadpacket
    if isinstance(operator, torch._ops.OpOverload):
        return operator.overloadpacket
    return operator


def seen_forms(function: Callable[..., Any]) -> dict[Any, bool]:
    """The callables a CTC pass sees for ``function``, each with whether it writes in place.

    An operator (``torch.ops.lib.name``, or what ``torch.library.custom_op`` made) is seen as
    itself where the model calls ``torch.ops.lib.name(...)`` and as an overload
    (``torch.ops.lib.name.default``) where it calls the custom operator's function: both are
    covered (the ``out=`` overloads are not), and an overload covers the operator where it is
    its only one; all in place where the operator's name ends in one ``_`` (``aten::atan_``).
    A function of the ``torch`` namespace or a tensor method is seen as each of ``torch.name``,
    ``x.name()``, ``torch.name_`` and ``x.name_()`` that exists (the last two in place);
    anything else as itself, in place when its name ends in one ``_``.
    """
    if _is_operator(function):
        packet = _packet(function)
        writes = is_inplace(packet)  # aten::atan_ writes in place, as its forms do
        if isinstance(function, torch._ops.OpOverload):
            single = len(packet.overloads()) == 1
            return dict.fromkeys([function, *([packet] if single else [])], writes)
        overloads = [  # not the out= forms, which write into a buffer of the caller's
            getattr(packet, name)
            for name in packet.overloads()
            if name != "out" and not name.endswith("_out")
        ]
        return dict.fromkeys([packet, *overloads], writes)
    name = getattr(function, "__name__", "")
    base = name[:-1] if is_inplace(function) else name
    family = [
        getattr(owner, base + end, None) for end in ("", "_") for owner in (torch, torch.Tensor)
    ]
    if base and function in family:
        return {form: is_inplace(form) for form in family if callable(form)}
    return {function: is_inplace(function)}


@functools.cache
def _overridable() -> frozenset[Any]:
    """The Python functions of torch (and tensor methods) that dispatch to a torch function mode."""
    listed = torch.overrides.get_overridable_functions()
    return frozenset(f for functions in listed.values() for f in functions)


def _seen(function: Any) -> bool:
    """Whether a CTC pass sees ``function`` called (its torch function mode is given it).

    An operator, or a function of torch's that dispatches to torch function modes:
    ``torch.atan``, ``torch.atan_``, ``Tensor.atan_``, ``F.silu``, ``Tensor.split``.
    """
    if _is_operator(function):
        return True
    if isinstance(function, types.BuiltinFunctionType):  # torch.atan, torch.atan_, torch._C._nn
        owner = getattr(function, "__self__", None)
        return not isinstance(owner, torch.Tensor) and (function.__module__ or "").startswith(
            "torch"
        )
    objclass = getattr(function, "__objclass__", None)  # Tensor.atan, Tensor.__mul__
    if isinstance(objclass, type) and issubclass(objclass, torch._C.TensorBase):
        return True
    try:
        return function in _overridable()  # F.silu, Tensor.split: Python functions of torch's
    except TypeError:  # unhashable
        return False


def _torch_function_named(name: str) -> str:
    """How to write the torch function called ``name``: ``torch.tanh``, or ``F``'s full name."""
    if callable(getattr(torch, name, None)):
        return f"torch.{name}"
    if callable(getattr(torch.nn.functional, name, None)):
        return f"torch.nn.functional.{name}"
    return f"the torch function {name}"


_SEE_CALLS = (
    "the pass sees the torch functions {it} calls, never {what} itself; register those (for "
    "one that calls torch.atan: register_rule(torch.atan, like=torch.tanh)), or make "
    "the computation a custom operator (torch.library.custom_op) and register that"
)


def _unseen(function: Any) -> str | None:
    """Why a CTC pass never sees ``function`` called, with what to register; ``None`` if it does."""
    if _seen(function):
        return None
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", None)
    if isinstance(function, torch.nn.Module):
        return f"{type(function).__name__} is a module: " + _SEE_CALLS.format(
            it="its forward", what="the module"
        )
    if isinstance(function, type) and issubclass(function, torch.nn.Module):
        return f"{name} is a module class: " + _SEE_CALLS.format(
            it="its forward", what="the module"
        )
    if isinstance(function, functools.partial):
        wrapped = function.func
        if _seen(wrapped):
            wrapped = operation_name(wrapped)
            return (
                f"the function given is a functools.partial of {wrapped}: the pass sees {wrapped} "
                f"called, never the partial; register {wrapped} (its rule serves every call)"
            )
        return "the function given is a functools.partial: " + _SEE_CALLS.format(
            it="it", what="the partial"
        )
    owner = getattr(function, "__self__", None)
    if isinstance(owner, torch.Tensor):  # x.atan: a method bound to one tensor
        return (
            f"{function!r} is a method of one tensor: register torch.Tensor.{function.__name__}, "
            "which serves every tensor's"
        )
    if inspect.ismethod(function):
        what = "a module" if isinstance(owner, torch.nn.Module) else "an object"
        return f"{name} is a method of {what}: " + _SEE_CALLS.format(it="it", what="the method")
    module = getattr(function, "__module__", None) or type(function).__module__
    if not module.startswith("torch"):
        if inspect.isfunction(function):
            return f"{name} is a Python function: " + _SEE_CALLS.format(
                it="it", what="the function"
            )
        shown = f"{module}.{name}" if name else repr(function)
        return (
            f"{shown} computes outside torch (the pass sees only torch functions called on its "
            "tensors): call its torch equivalent in the model and register that "
            f"({_torch_function_named(getattr(function, '__name__', '?'))})"
        )
    return (
        f"{module}.{name} is no function a CTC pass sees called (it does not dispatch to torch's "
        "function modes): register the torch functions it calls, or a torch function, tensor "
        "method or torch.library custom operator"
    )


def register_rule(
    function: Callable[..., Any], *, like: Callable[..., Any], inplace: bool | None = None
) -> RegisteredRule:
    """Let CTC propagate copies through ``function`` with the rule of the table's ``like``.

    For an elementwise activation without a row, a torch function, tensor method or
    ``torch.library`` custom operator (what the pass sees: a Python function, module or
    ``functools.partial`` of your own is not seen, only the torch calls inside it) that computes
    what an activation of the table computes, of one signal, its first argument (the others
    must be constants: numbers, parameters, buffers; a call with the feature copies in another
    argument is refused by the pass), with its arguments in the same places:
    ``register_rule(torch.atan, like=torch.tanh)`` (a squashing activation: a rescale gate,
    and a gate tensor for the products it enters), ``register_rule(torch.ops.mylib.swish,
    like=torch.nn.functional.silu)`` (a custom operator, see ``torch.library``). ``like``'s rule
    multiplies every copy by ``y / x`` of the gate copy, calling ``function`` for ``y``: a ReLU
    written as a custom operator may take ``like=torch.nn.functional.silu``, whose ``y / x`` is
    then ReLU's pattern ``1[x > 0]`` (0 at ``x = 0``), the scores of ``F.relu`` (tested); a
    leaky ReLU would not (its slope at ``x = 0`` is lost). Every
    later CTC pass, in every thread, uses it (also through
    [`CTCAttributor`][ctc_plugin.CTCAttributor]'s functional rules), in every form the pass sees
    (see [`seen_forms`][ctc_plugin.ctc.operations.seen_forms]): ``torch.atan`` covers
    ``x.atan()`` and the in-place ``x.atan_()`` too, a custom operator its overloads, however
    the model calls it. Forms with a rule of their own keep it. Other kinds of operations
    read their arguments by name or identity in their handlers, so they need a row of their own
    in the table (the architecture page's "How to support a new operation").

    CTC cannot check that the two compute alike: a nonlinear function registered like a
    linear one gives wrong scores, which in ``"proportional"`` sharing still add up to the
    output. Check a registration on a small model in ``"none"`` sharing, whose scores are the
    gradient x input of the network linearised at its gates (``torch.func.jvp`` or
    ``torch.autograd.grad`` with those gates held fixed).

    Functions called inside TorchScript or compiled C++ code are never seen by the pass and
    cannot be registered; write them with torch operations instead.

    Args:
        function: The function (a torch function, tensor method or ``torch.ops`` operator).
        like: An elementwise activation with a row in the table (the kinds "rescale" and
            the squashing "gate tensor" activations: ``python -m ctc_plugin.ctc.operations``
            prints the table).
        inplace: ``function`` writes its result into its input (as ``x.sigmoid_()`` does);
            its arguments are not read for it. Default: a name ending in one ``_``
            (``torch.Tensor.atan_``) is in place, other names are not; a custom operator that
            writes into its input needs ``inplace=True``. The other forms of a torch function
            (``x.atan_()`` for ``torch.atan``) are in place where their names say so.

    Returns:
        A [`RegisteredRule`][ctc_plugin.ctc.operations.RegisteredRule], whose ``remove()``
        takes the rule away (or use it as a context manager).

    Raises:
        TypeError: ``function`` is not callable, or not seen called by the pass: a Python
            function or method, an ``nn.Module`` or its class (register the torch functions its
            forward calls), a ``functools.partial`` (register the function it wraps), a
            function of ``math`` or NumPy (register its torch equivalent), a method bound to one
            tensor (register the ``torch.Tensor`` method); or ``like`` is a name, not the
            function (``like=torch.tanh``, not ``"tanh"``).
        ValueError: ``like`` is no elementwise activation of the table, ``function`` has
            a rule already (of the table, or registered: remove that first), or
            ``inplace=False`` is said of a function whose name says it writes in place.
    """
    if not callable(function):
        raise TypeError(f"function must be callable, got {type(function).__name__}")
    unseen = _unseen(function)
    if unseen is not None:
        raise TypeError(unseen)
    if isinstance(like, str):
        raise TypeError(
            f"like= takes the function ({_torch_function_named(like)}), not its name {like!r}"
        )
    row = table_row(like)
    if row is None or not getattr(row.handler, "elementwise", False):
        why = (
            "has no CTC rule to share"
            if row is None
            else "has a rule of its own that reads its arguments, not one for any activation"
        )
        raise ValueError(
            f"{operation_name(like)} {why}: give like= an elementwise activation of the table "
            "(torch.nn.functional.silu, gelu, ... for a smooth one; torch.sigmoid, torch.tanh "
            "for a squashing one); python -m ctc_plugin.ctc.operations prints the table"
        )
    forms = seen_forms(function)
    if inplace is False and is_inplace(_packet(function) if _is_operator(function) else function):
        raise ValueError(
            f"{operation_name(function)} writes its result into its input (its name ends in "
            "'_'), and inplace=False would give each copy's result to the full pass's tensor "
            "only: leave inplace out (or pass inplace=True)"
        )
    with _REGISTERING:
        taken = {form: rule_for(form) for form in forms}
        # the function itself, or for an operator seen only as its overloads a free one
        named = (
            function
            if function in taken
            else next((form for form, rule in taken.items() if rule is None), next(iter(taken)))
        )
        existing = taken[named]
        if existing is not None:
            where = "registered" if named in _REGISTERED else "in the table"
            raise ValueError(
                f"{operation_name(named)} has a CTC rule already ({where}: {existing.kind}, "
                f"{existing.rule}); remove a registered one first with the handle "
                "register_rule returned"
            )
        free = {form: writes for form, writes in forms.items() if taken[form] is None}
        handle = RegisteredRule(function, like, tuple(free))
        for form, writes in free.items():
            # inplace= speaks of the function given and of all forms of an operator (one
            # computation); the other forms of a torch function are as their names say
            told = inplace is not None and (form is function or _is_operator(function))
            rescaled = g.rescale(
                gate=row.makes_gate, inplace_default=inplace if told else writes, read_inplace=False
            )
            _REGISTERED[form] = (dataclasses.replace(row, handler=rescaled), handle)
    return handle


if __name__ == "__main__":  # pragma: no cover - prints the docs table
    print(rules_table_markdown(), end="")
