"""One model, several threads: which calls may overlap, and what keeps their results exact.

Most attribution calls only *read* the model: [`CTC`][ctc_plugin.CTC] (its rules run in a
`TorchFunctionMode`, which PyTorch keeps per thread), [`IntegrativeCAM`][ctc_plugin.IntegrativeCAM]
and its pytorch-grad-cam face (their module hooks record only the passes of the call that registered
them: [`CallScope`][ctc_plugin.concurrency.CallScope]), and
[`ExplainerAttribution`][ctc_plugin.ExplainerAttribution] with an explainer in eval mode. Other
calls must *change* the model while they run: [`CTCAttributor`][ctc_plugin.CTCAttributor] (Zennit
hooks and canonizers, biases taken off affine modules during the pass), a Zennit composite as
within-feature relevance, an explainer switched from training to eval mode.

Each model gets a readers-writer lock ([`lock_for`][ctc_plugin.concurrency.lock_for]): calls that
read hold it shared and run at the same time; calls that change the model hold it exclusively, so no
other call of this package sees the model half changed. Both are re-entrant within a thread (a call
that changes the model may run one that reads it). The result of every call then equals its result
in some sequential order of the calls. In a forked child the locks keep only the forking thread's
holds: the other threads' calls did not survive the fork and would never give theirs back; a
model that one of them was changing at the fork is refused in the child (it may be half changed).

What the lock cannot cover: code outside this package that runs the model (a plain
``model(x)`` in another thread) takes no lock, and a composite registered outside a call
(``with CTCAttributor(...) as attributor:``, ``composite.context(model)``) changes the model for
every thread until it is removed. The lock belongs to the object given to the class: a plain
function wrapping the model (``lambda x: model(x)``) is not recognised as that model.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from torch import nn

from ctc_plugin.module_state import modes_kept

__all__ = [
    "CallScope",
    "ModelLock",
    "PerThread",
    "eval_mode",
    "exclusive",
    "holds_model",
    "lock_for",
    "model_of",
    "shared",
]

F = TypeVar("F", bound=Callable[..., Any])


def model_of(forward_func: Any) -> nn.Module | None:
    """The ``torch.nn.Module`` behind a forward function: itself, or the owner of a bound method.

    Returns None for any other callable (a plain function or lambda wrapping a model).
    """
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


class ModelLock:
    """A re-entrant readers-writer lock: many readers at once, or one writer.

    A thread that holds the lock in either way may take it again in either way. A thread that
    reads and then asks to write (a nested call that changes the model) lets go of its reads
    while it waits, so two such threads cannot wait for each other; writers that go first in
    that gap restore the model before they let go (every caller in this package does), and the
    thread's reads are back the moment its write ends. Waiting writers go before new readers.

    Args:
        name: What the lock guards, for error messages.
    """

    def __init__(self, name: str = "the model") -> None:
        self.name = name
        self._condition = threading.Condition(threading.Lock())
        self._readers: dict[int, int] = {}  # thread id -> depth
        self._writer: int | None = None
        self._writer_depth = 0
        self._waiting_writers = 0
        self._suspended_reads = 0  # the writer's reads, given back when its write ends
        self._torn = False  # forked while another thread's call was changing the model
        _MODEL_LOCKS.add(self)

    def _forget_other_threads(self) -> None:
        """In a forked child: drop what the threads that did not survive the fork held.

        Only the forking thread lives on in the child; its own reads and write stay (it gives
        them back as usual). Another thread's entry would never be given back, and the child's
        first call that needs the model alone would wait for it forever. The mutex is made
        anew: another thread may have held it at the fork. Another thread's write was changing
        the model (a composite registered, a bias taken off a layer) and will never put it back
        here: the lock is torn, and every later call on the model is refused
        (`check_not_torn`).
        """
        me = threading.get_ident()
        self._condition = threading.Condition(threading.Lock())
        self._readers = {me: self._readers[me]} if me in self._readers else {}
        if self._writer not in (None, me):
            self._torn = True
        if self._writer != me:
            self._writer, self._writer_depth, self._suspended_reads = None, 0, 0
        self._waiting_writers = 0  # the forking thread was not waiting

    def check_not_torn(self) -> None:
        """Refuse a model another thread's call was changing when this process forked.

        Raises:
            RuntimeError: Saying why the model may be half changed and what to do.
        """
        if self._torn:
            raise RuntimeError(
                f"{self.name} was being changed by another thread's call of ctc_plugin when this "
                "process forked (a composite registered, a bias taken off a layer, BatchNorm "
                "merged): that call will never put it back in this child, so the model here "
                "may be half changed; load or copy the model again in the child, fork before "
                "such calls start, or use the 'spawn' start method"
            )

    def acquire_shared(self) -> None:
        """Take the lock for reading (wait while another thread writes or waits to).

        Raises:
            RuntimeError: The process forked while another thread changed the model
                (`check_not_torn`).
        """
        self.check_not_torn()
        me = threading.get_ident()
        with self._condition:
            if self._writer != me and me not in self._readers:
                while self._writer is not None or self._waiting_writers:
                    self._condition.wait()
            self._readers[me] = self._readers.get(me, 0) + 1

    def release_shared(self) -> None:
        """Give back one `acquire_shared` of this thread."""
        me = threading.get_ident()
        with self._condition:
            depth = self._readers.get(me, 0)
            if depth == 0:
                raise RuntimeError(f"this thread does not read {self.name}")
            if depth == 1:
                del self._readers[me]
            else:
                self._readers[me] = depth - 1
            self._condition.notify_all()

    def acquire_exclusive(self) -> None:
        """Take the lock for writing (wait until no other thread reads or writes).

        Raises:
            RuntimeError: The process forked while another thread changed the model
                (`check_not_torn`).
        """
        self.check_not_torn()
        me = threading.get_ident()
        with self._condition:
            if self._writer == me:
                self._writer_depth += 1
                return
            reads = self._readers.pop(me, 0)  # let go of this thread's reads while waiting
            self._waiting_writers += 1
            try:
                while self._writer is not None or self._readers:
                    self._condition.wait()
            except BaseException:
                if reads:  # interrupted: take the reads back before leaving
                    while self._writer is not None:
                        self._condition.wait()
                    self._readers[me] = reads
                raise
            finally:
                self._waiting_writers -= 1
                self._condition.notify_all()
            self._writer = me
            self._writer_depth = 1
            self._suspended_reads = reads

    def release_exclusive(self) -> None:
        """Give back one `acquire_exclusive` of this thread."""
        with self._condition:
            if self._writer != threading.get_ident():
                raise RuntimeError(f"this thread does not hold {self.name} exclusively")
            self._writer_depth -= 1
            if self._writer_depth == 0:
                self._writer = None
                if self._suspended_reads:  # the reads this thread had before: back at once
                    self._readers[threading.get_ident()] = self._suspended_reads
                    self._suspended_reads = 0
                self._condition.notify_all()

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Hold the lock shared within the block."""
        self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the lock exclusively within the block."""
        self.acquire_exclusive()
        try:
            yield
        finally:
            self.release_exclusive()


_LOCKS: dict[int, ModelLock] = {}
_LOCKS_GUARD = threading.Lock()
_MODEL_LOCKS: weakref.WeakSet[ModelLock] = weakref.WeakSet()  # every lock, for a forked child
_PER_THREAD: weakref.WeakSet[PerThread] = weakref.WeakSet()


def lock_for(obj: Any) -> ModelLock:
    """The one `ModelLock` of ``obj`` (made on first use, dropped with ``obj``).

    ``obj`` is usually a model; any object that supports weak references works (a composite).
    The lock lives beside the object, not in it, so copying or pickling the model is unaffected.
    """
    key = id(obj)
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = ModelLock(f"the {type(obj).__name__} at {key:#x}")
            weakref.finalize(obj, _LOCKS.pop, key, None)
        return lock


@contextmanager
def shared(obj: Any) -> Iterator[None]:
    """Within the block, ``obj`` is used by calls that do not change it (None: no lock)."""
    if obj is None:
        yield
        return
    with lock_for(obj).reading():
        yield


@contextmanager
def exclusive(obj: Any) -> Iterator[None]:
    """Within the block, no other thread's call of this package uses ``obj`` (None: no lock)."""
    if obj is None:
        yield
        return
    with lock_for(obj).writing():
        yield


def holds_model(exclusive_if: Callable[[dict[str, Any]], bool] | None = None) -> Callable[[F], F]:
    """Decorate an attribution method to hold the model of ``self.forward_func`` while it runs.

    The model (see [`model_of`][ctc_plugin.concurrency.model_of]) is held shared, or exclusively
    where ``exclusive_if`` returns True for the call's arguments (by parameter name, defaults
    included).

    Args:
        exclusive_if: ``f(arguments) -> bool``; None: always shared.
    """

    def decorate(method: F) -> F:
        signature = inspect.signature(method)

        @functools.wraps(method)
        def held(self: Any, *args: Any, **kwargs: Any) -> Any:
            model = model_of(getattr(self, "forward_func", None))
            hold = shared
            if exclusive_if is not None:
                try:
                    bound = signature.bind(self, *args, **kwargs)
                except TypeError:
                    return method(self, *args, **kwargs)  # Python's own error for the call
                bound.apply_defaults()
                if exclusive_if(bound.arguments):
                    hold = exclusive
            with hold(model):
                return method(self, *args, **kwargs)

        return held  # type: ignore[return-value]

    return decorate


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``module`` in eval mode, changing it only where it must.

    A module whose submodules are all in eval mode is held shared and left alone. One with any
    submodule in training mode (the module itself, or only a part of it: ``net.eval();
    net.encoder.train()``) is held exclusively, switched to eval mode, and every submodule's
    mode is restored afterwards (also on an exception), so other threads never see the switch.
    """

    def in_training() -> bool:
        return any(sub.training for sub in module.modules())

    while True:
        training = in_training()
        with (exclusive if training else shared)(module):
            if in_training() != training:
                continue  # switched by someone else while this thread waited: decide again
            if not training:
                yield module
                return
            with modes_kept(module):
                module.eval()
                yield module
            return


_SCOPES: ContextVar[tuple[CallScope, ...]] = ContextVar("ctc_plugin_call_scopes", default=())


class CallScope:
    """Marks the forward passes of one call, so that its module hooks ignore everyone else's.

    A module hook registered on a shared model is called for every forward through that module, from
    every thread. Wrapped with [`only`][ctc_plugin.concurrency.CallScope.only], it runs only for
    passes made inside this scope (``with scope:``) in this thread or context; other passes go
    through untouched.

    Examples:
        >>> scope = CallScope()
        >>> handle = layer.register_forward_hook(scope.only(record))
        >>> with scope:
        ...     output = model(x)          # record sees this pass, not other threads' passes
    """

    def __init__(self) -> None:
        self._tokens: list[Any] = []

    def __enter__(self) -> CallScope:
        self._tokens.append(_SCOPES.set((*_SCOPES.get(), self)))
        return self

    def __exit__(self, *exc: object) -> None:
        _SCOPES.reset(self._tokens.pop())

    @property
    def active(self) -> bool:
        """Whether the code running now is inside this scope."""
        return any(scope is self for scope in _SCOPES.get())

    def only(self, hook: F) -> F:
        """``hook`` called only inside this scope (returning None, i.e. no change, outside)."""

        @functools.wraps(hook)
        def scoped(*args: Any, **kwargs: Any) -> Any:
            return hook(*args, **kwargs) if self.active else None

        scoped.call_scope = self  # type: ignore[attr-defined]
        return scoped  # type: ignore[return-value]


def inert_here(hook: Any) -> bool:
    """Whether ``hook`` does nothing for the code running now.

    That is a `CallScope.only` hook of a scope that is not active here (another call's, in
    another thread).

    A pass that must see every hook that could change its result (CTC's gradient pass) can
    ignore such hooks.
    """
    scope = getattr(hook, "call_scope", None)
    return isinstance(scope, CallScope) and not scope.active


class PerThread:
    """An instance attribute that each thread sets and reads for itself.

    For the result of a call kept on a shared object (``attributor.feature_scores``,
    ``cam.outputs``): after a call, each thread reads the result of its own last call. Values
    live beside the instance, so copying or pickling it is unaffected (a copy starts empty).

    Args:
        default: What a thread reads before it set a value.
    """

    def __init__(self, default: Any = None) -> None:
        self.default = default
        self._values: weakref.WeakKeyDictionary[Any, threading.local] = weakref.WeakKeyDictionary()
        self._guard = threading.Lock()
        self.name = "value"
        _PER_THREAD.add(self)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        local = self._values.get(obj)
        return self.default if local is None else getattr(local, "value", self.default)

    def __set__(self, obj: Any, value: Any) -> None:
        with self._guard:
            local = self._values.get(obj)
            if local is None:
                local = self._values[obj] = threading.local()
        local.value = value


def _after_fork_in_child() -> None:
    """Free in a forked child what threads that did not survive the fork held.

    Each `ModelLock` keeps only the forking thread's reads and write (another thread's would
    never be given back: the child's first call that needs its model alone would wait
    forever), and every mutex of this module is made anew (another thread may have held one at
    the fork).
    """
    global _LOCKS_GUARD
    _LOCKS_GUARD = threading.Lock()
    for lock in list(_MODEL_LOCKS):
        lock._forget_other_threads()
    for attribute in list(_PER_THREAD):
        attribute._guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
