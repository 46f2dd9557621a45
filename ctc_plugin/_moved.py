"""One clear ``TypeError`` for keyword arguments that moved into a config object or elsewhere.

The package is unreleased (0.1), so old keyword arguments are not kept as aliases; a call that
still uses one fails at once with a message that says where the setting lives now, instead of
Python's bare ``unexpected keyword argument``. The wrapped function keeps its signature and
docstring (``functools.wraps``), so the documentation shows only the new API.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = ["moved_keywords"]

F = TypeVar("F", bound=Callable[..., Any])


def moved_keywords(
    *,
    config: tuple[type, str] | None = None,
    hints: Mapping[str, str] | None = None,
    old_call: Callable[[tuple[Any, ...], dict[str, Any]], str | None] | None = None,
) -> Callable[[F], F]:
    """Refuse the keyword arguments a function no longer takes, saying where each went.

    Args:
        config: ``(ConfigClass, parameter)``: keywords named like a field of the dataclass
            ``ConfigClass`` are refused with the call that sets them on the config, e.g.
            ``config=SelectionConfig(k=3, eps=5.0)``.
        hints: Other retired keywords, each with the sentence that says what to do instead.
        old_call: Recognises a retired calling form from ``(args, kwargs)`` (e.g. arguments in
            their old order) and returns what to do instead, or ``None`` for a current call.

    Returns:
        A decorator for functions and ``__init__`` methods.
    """
    fields = {f.name for f in dataclasses.fields(config[0])} if config is not None else set()
    other = dict(hints or {})

    def decorate(function: F) -> F:
        name = function.__qualname__.removesuffix(".__init__")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            advice = old_call(args, kwargs) if old_call is not None else None
            if advice is not None:
                raise TypeError(f"{name}() is called differently now: {advice}")
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
