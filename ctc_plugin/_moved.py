"""Keyword arguments that moved: one clear ``TypeError``, or for a plain rename one warning.

The package is unreleased (0.1), so old keyword arguments are mostly not kept as aliases; a
call that still uses one fails at once with a message that says where the setting lives now,
instead of Python's bare ``unexpected keyword argument`` (`moved_keywords`). A parameter that
only changed its name to the one the libraries around it use (the metrics' ``targets=``, now
Captum's ``target=``) keeps the old name working for a while, with a ``FutureWarning``
(`renamed_keywords`). Either way the wrapped function keeps its signature and docstring
(``functools.wraps``), so ``help()``, ``inspect.signature`` and the documentation show only
the new API.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ctc_plugin.wording import caller_stacklevel

__all__ = ["moved_keywords", "renamed_keywords"]

F = TypeVar("F", bound=Callable[..., Any])


def moved_keywords(
    *,
    config: tuple[type, str] | None = None,
    hints: Mapping[str, str] | None = None,
    old_call: Callable[[tuple[Any, ...], dict[str, Any]], str | None] | None = None,
    foreign: Mapping[str, str] | None = None,
) -> Callable[[F], F]:
    """Refuse the keyword arguments a function no longer takes, saying where each went.

    Also those it never took that its peers take (``foreign``): a Captum or pytorch-grad-cam
    user's keyword is told what it comes to here, not Python's bare ``unexpected keyword``.

    Args:
        config: ``(ConfigClass, parameter)``: keywords named like a field of the dataclass
            ``ConfigClass`` are refused with the call that sets them on the config, e.g.
            ``config=SelectionConfig(k=3, eps=5.0)``.
        hints: Other retired keywords, each with the sentence that says what to do instead.
        old_call: Recognises a retired calling form from ``(args, kwargs)`` (e.g. arguments in
            their old order) and returns what to do instead, or ``None`` for a current call.
        foreign: Keywords of the peers' methods (Captum's ``relu_attributions=``), each with
            the sentence that says what to do here.

    Returns:
        A decorator for functions and ``__init__`` methods.
    """
    fields = {f.name for f in dataclasses.fields(config[0])} if config is not None else set()
    other = dict(hints or {})
    peers = dict(foreign or {})

    def decorate(function: F) -> F:
        name = function.__qualname__.removesuffix(".__init__")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            advice = old_call(args, kwargs) if old_call is not None else None
            if advice is not None:
                raise TypeError(f"{name}() is called differently now: {advice}")
            theirs = [k for k in kwargs if k in peers]
            if theirs:
                given = ", ".join(f"{k}=" for k in theirs)
                reasons = "; ".join(dict.fromkeys(peers[k] for k in theirs))
                raise TypeError(f"{name}() does not take {given}: {reasons}")
            moved = {k: v for k, v in kwargs.items() if k in fields and k not in other}
            retired = [k for k in kwargs if k in other]
            if moved or retired:
                given = ", ".join(f"{k}=" for k in (*moved, *retired))
                reasons = list(dict.fromkeys(other[k] for k in retired))
                if moved and config is not None:
                    cls, parameter = config
                    values = ", ".join(f"{k}={v!r}" for k, v in moved.items())
                    reasons.insert(
                        0,
                        f"{', '.join(moved)} {'is a field' if len(moved) == 1 else 'are fields'} "
                        f"of {cls.__name__}: pass {parameter}={cls.__name__}({values}) "
                        f"(or dataclasses.replace(an_existing_config, {values}))",
                    )
                raise TypeError(f"{name}() no longer takes {given}: {'; '.join(reasons)}")
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def renamed_keywords(renames: Mapping[str, str], why: str = "") -> Callable[[F], F]:
    """Keep old names of renamed parameters working, with a ``FutureWarning`` naming the new one.

    The decorated function is written with the new names only. A call that passes an old name
    as a keyword runs as if it had passed the new one, and warns (pointing at the caller's
    line) that the old name is deprecated and the new one is to be used. A call that gives
    both, the new name by keyword or by position, is a ``TypeError`` naming both. Calls by
    position and with the new name run unchanged and silently.

    Args:
        renames: ``{old name: new name}``, e.g. ``{"targets": "target"}``.
        why: Why the new name, appended to the warning (e.g. ``"the name Captum uses"``).

    Returns:
        A decorator for functions.

    Raises:
        ValueError: On decoration, where a new name is no parameter of the function or an old
            name still is one, or where a new name takes no keyword (positional-only, or
            ``*args``/``**kwargs``): the old keyword could never map to it.
    """
    renames = dict(renames)

    def decorate(function: F) -> F:
        name = function.__qualname__
        parameters = list(inspect.signature(function).parameters.values())
        named = {p.name for p in parameters}
        positional = [
            p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        for old, new in renames.items():
            if new not in named or old in named:
                raise ValueError(
                    f"renamed_keywords({old!r} -> {new!r}) on {name}(): the function must take "
                    f"{new!r} and not {old!r}"
                )
            kind = next(p.kind for p in parameters if p.name == new)
            if kind not in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                inspect.Parameter.KEYWORD_ONLY,
            ):
                raise ValueError(
                    f"renamed_keywords({old!r} -> {new!r}) on {name}(): {new!r} is "
                    f"{kind.description}, so {old}= could never reach it: make {new!r} a "
                    "parameter a keyword can give"
                )
        # how many positional arguments reach each new name (None: it is keyword-only)
        place = {
            new: positional.index(new) if new in positional else None for new in renames.values()
        }

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                # read now: a function built in a factory is often given its name afterwards
                shown = wrapper.__qualname__
                if "<locals>" in shown:
                    shown = wrapper.__name__
                index = place[new]
                by_position = index is not None and len(args) > index
                if new in kwargs or by_position:
                    how = "by position" if by_position else f"as {new}="
                    raise TypeError(
                        f"{shown}() got both {new} ({how}) and {old}=, the old name of {new}: "
                        f"give only {new}="
                    )
                warnings.warn(
                    f"{shown}({old}=...) is deprecated and will be removed: use {new}=... "
                    f"instead{f' ({why})' if why else ''}",
                    FutureWarning,
                    stacklevel=caller_stacklevel(),
                )
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
