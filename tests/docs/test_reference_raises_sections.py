"""Every function the reference pages render says what it raises.

A public function that raises on bad input and whose docstring has no ``Raises:`` section
leaves the reader of the API reference to find its errors by calling it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference"


def _raises_itself(function: object) -> bool:
    """Whether ``function``'s own body (not a nested function's) has a ``raise X``."""
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        return False

    def walk(node: ast.AST) -> bool:
        for child in ast.iter_child_nodes(node):
            if isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef
            ):
                continue
            if isinstance(child, ast.Raise) and child.exc is not None:
                return True
            if walk(child):
                return True
        return False

    return walk(ast.parse(source).body[0])


def _rendered(identifier: str) -> object:
    parts = identifier.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value: object = importlib.import_module(".".join(parts[:cut]))
            break
        except ImportError:
            continue
    for part in parts[cut:]:
        value = getattr(value, part)
    return value


def _functions(value: object, name: str) -> list[tuple[str, object, str]]:
    """(name, function, the docstring that documents it) of what the reference renders."""
    if inspect.ismodule(value):
        names = getattr(value, "__all__", None) or [n for n in vars(value) if n[0] != "_"]
        found = []
        for member in names:
            item = getattr(value, member)
            if getattr(item, "__module__", None) == value.__name__:
                found += _functions(item, f"{name}.{member}")
        return found
    if inspect.isclass(value):
        found = []
        for member, item in vars(value).items():
            if inspect.isfunction(item) and (member[0] != "_" or member == "__init__"):
                # a constructor's errors are documented on its class
                doc = value.__doc__ if member == "__init__" else inspect.getdoc(item)
                found.append((f"{name}.{member}", item, doc or ""))
        return found
    if inspect.isfunction(value):
        return [(name, value, inspect.getdoc(value) or "")]
    return []


def test_documented_functions_that_raise_have_a_raises_section():
    """Fourteen did not (the perturbations, ``binarize``, ``plan_shards``, ``Normalize``, ...)."""
    identifiers = set()
    for page in REFERENCE.glob("*.md"):
        identifiers |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), re.M))
    assert len(identifiers) > 40
    missing = {
        name
        for identifier in identifiers
        for name, function, doc in _functions(_rendered(identifier), identifier)
        if "Raises:" not in doc
        and _raises_itself(function)
        and function.__module__ != "typing"  # a typing.Protocol's own __init__
    }
    assert not missing, sorted(missing)
