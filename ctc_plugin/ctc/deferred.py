"""Products of two signals whose copies are computed only where the model reads them as a signal.

``q @ k^T``, a matrix product of two signals, is nearly always a vision transformer's attention
scores: a softmax makes them a gate, and only the full pass's value matters, computed for the
gate copy alone (a gate-only tensor, see [`GateMark`][ctc_plugin.ctc.rules.GateMark]). But such
a product can be a signal too: CoaT's factorised attention ``q @ (softmax(k)^T v)``, linear
attention's ``q @ (k^T v)``, bilinear pooling. There its copies follow the uniform rule, as
elementwise products of two signals do
([`GatedPass.signal_product`][ctc_plugin.ctc.gate_rules.GateRules.signal_product]): each factor's
copies times the other factors' full-pass values, averaged over the factors. Computing those
copies for every attention score would cost a vision transformer several per cent for nothing,
so the product is computed for the gate copy and carries a
[`DeferredSignal`][ctc_plugin.ctc.deferred.DeferredSignal]: how to compute its copies when they
are needed.

[`CTCMode`][ctc_plugin.ctc.interception.CTCMode] carries the deferral on through the operations
that take such a tensor alone or with constants (scaling, masking, slicing, a linear layer) and
through sums with the signal (relative position terms added to the scores); an operation whose
result is a gate whatever its operands (a softmax, a comparison: rows with ``makes_gate``, in
place too, and operations without a rule, such as a softmax written out with ``exp``) ends it.
A view without a rule (``scores.diagonal(...)``, ``scores.select(...)``) carries it on: it holds the
product's entries, and its copies are refused where they are needed, as the view of a signal
is. Where the tensor meets the signal in any other operation, or is the model's output, its
copies are computed ([`materialise`][ctc_plugin.ctc.deferred.materialise]) by replaying the
operations that made it on the copies, each by its own rule, and the operation runs on them as
on any signal (a product of two deferred products is such a product of their copies, computed
in turn). The result is the same as computing the copies at once; past `MAX_DEPTH` operations
the copies are computed, and what follows reads them as a signal (an operation without a rule
is then refused).

A replay holds the operations' other operands and, for a deferred operand, its `DeferredSignal`
(a [`Slot`][ctc_plugin.ctc.deferred.Slot]), never the gate-only tensor itself: a tensor written
in place carries a deferral whose replay would otherwise hold that tensor (a reference cycle that
keeps attention scores alive until the cycle collector runs), and the gate-only tensors of a
chain are freed as the model lets go of them. What an in-place call overwrites in a tensor that
was no deferred product is kept as it was before the call (a snapshot), for the replay to start
from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

from ctc_plugin.ctc.calls import is_inplace
from ctc_plugin.ctc.errors import UnsupportedOperationError
from ctc_plugin.ctc.rules import DEFERRED_ATTRIBUTE, GATE_ATTRIBUTE

#: The most operations a deferral is carried through: past it the copies are computed, so a
#: model that never reads the product as a gate replays a short chain, not its whole remainder.
MAX_DEPTH = 16


@dataclass
class Replay:
    """How to compute the copies of one operation's results once: run, then keep.

    Attributes:
        compute: Computes the operation's output (the same structure as the call's) with the
            deferred operands' copies computed, every tensor by its rule.
        operation: The operation, named in refusals.
        watched: Propagated tensors ``compute`` reads as they are, with their versions when the
            deferral was made: written in place since, they would no longer be what the
            operation read.
        gate: The result stands for a product of two gate tensors (a ReLU6 output times a
            squeeze-excitation's sigmoid): where it multiplies the signal (a row that
            ``takes_gate_only``, sums aside) it is a gate, the full pass's value, as before it
            was deferred; read as a signal anywhere else, its copies are computed.
    """

    compute: Callable[[], Any] | None
    operation: str
    watched: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    gate: bool = False
    _out: Any = None

    def result(self) -> Any:
        """The operation's output on the copies (computed at the first call)."""
        if self.compute is not None:
            for tensor, version in self.watched:
                if tensor._version != version:
                    raise UnsupportedOperationError(
                        self.operation,
                        "an operand it read was written in place afterwards, before the copies "
                        "of its result (a product of two input-dependent tensors) were needed; "
                        "write that operand out of place",
                    )
            self._out, self.compute, self.watched = self.compute(), None, []
        return self._out


@dataclass(frozen=True)
class DeferredSignal:
    """A gate-only tensor that stands for a signal whose copies are not computed yet.

    Attributes:
        replay: Computes the output of the operation that made the tensor.
        leaf: The tensor's index among the leaves of that output.
        version: The tensor's version when it was made: a write into it since (through a view)
            is refused when the copies are needed.
        depth: How many operations the deferral was carried through.
    """

    replay: Replay
    leaf: int
    version: int
    depth: int


def deferral(value: Any) -> DeferredSignal | None:
    """The `DeferredSignal` of a tensor, or ``None``."""
    return getattr(value, DEFERRED_ATTRIBUTE, None)


def defer(out: Any, replay: Replay, depth: int) -> Any:
    """Attach ``replay`` to every gate-only tensor among the leaves of ``out``; return ``out``."""
    for index, leaf in enumerate(tree_flatten(out)[0]):
        mark = getattr(leaf, GATE_ATTRIBUTE, None) if isinstance(leaf, torch.Tensor) else None
        if mark is not None and mark.only:
            setattr(leaf, DEFERRED_ATTRIBUTE, DeferredSignal(replay, index, leaf._version, depth))
    return out


def materialise(tensor: torch.Tensor) -> torch.Tensor:
    """The copies a deferred tensor stands for; any other tensor as it is.

    Raises:
        UnsupportedOperationError: The tensor was written in place since it was made (through
            a view), or an operand the replay reads was.
    """
    signal = deferral(tensor)
    if signal is None:
        return tensor
    return _copies(signal, fresh=tensor._version == signal.version)


def _copies(signal: DeferredSignal, fresh: bool) -> torch.Tensor:
    if not fresh:
        raise UnsupportedOperationError(
            signal.replay.operation,
            "its result (a product of two input-dependent tensors, or computed from one) was "
            "written in place through a view before its copies were needed; write it out of "
            "place",
        )
    copies = tree_flatten(signal.replay.result())[0][signal.leaf]
    return materialise(copies)  # a product of two deferred products is deferred in turn


def ended(out: Any) -> Any:
    """``out`` with the deferral of every tensor among its leaves removed; return ``out``.

    For what a rule made a gate (a softmax, ``scores.sigmoid_()`` in place): it no longer
    stands for the product, and an in-place call left the product's deferral on it.
    """
    for leaf in tree_flatten(out)[0]:
        if isinstance(leaf, torch.Tensor) and hasattr(leaf, DEFERRED_ATTRIBUTE):
            delattr(leaf, DEFERRED_ATTRIBUTE)
    return out


@dataclass(frozen=True)
class Slot:
    """Where a replay finds a deferred operand: its deferral, not the tensor.

    Attributes:
        signal: The operand's deferral when the call took it.
        fresh: Whether the operand was as that deferral left it (not written through a view).
    """

    signal: DeferredSignal
    fresh: bool


def slotted(operands: list[torch.Tensor], args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with every deferred tensor among ``operands`` as its `Slot`.

    What a replay keeps of a call: the deferred tensors as the call found them (a call writing
    into one gives it a new deferral afterwards; a write through a view made it stale, and its
    copies are refused if needed), and no reference to them.
    """
    found = {}
    for tensor in operands:
        signal = deferral(tensor)
        if signal is not None:
            found[id(tensor)] = (tensor, Slot(signal, tensor._version == signal.version))

    def replace(value: Any) -> Any:
        entry = found.get(id(value)) if isinstance(value, torch.Tensor) else None
        return value if entry is None or entry[0] is not value else entry[1]

    return tree_map(replace, (args, kwargs))


def slots(template: Any) -> list[Slot]:
    """The slots among the leaves of ``template`` (see `slotted`)."""
    return [leaf for leaf in tree_flatten(template)[0] if isinstance(leaf, Slot)]


def materialised(template: Any) -> Any:
    """``template`` (see `slotted`) with every `Slot` as the copies of its deferred tensor."""
    return tree_map(
        lambda value: _copies(value.signal, value.fresh) if isinstance(value, Slot) else value,
        template,
    )


def writes_first(func: Callable[..., Any]) -> bool:
    """Whether ``func`` writes into its first argument (``mul_``, ``+=``, ``x[i] = v``)."""
    return func is torch.Tensor.__setitem__ or is_inplace(func)


__all__ = [
    "MAX_DEPTH",
    "DeferredSignal",
    "Replay",
    "Slot",
    "defer",
    "deferral",
    "ended",
    "materialise",
    "materialised",
    "slots",
    "slotted",
    "writes_first",
]
