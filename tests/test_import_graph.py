"""The package's layers import one way: no circle between its subpackages and top-level modules.

The graph is read from the source with ``ast``, so every import counts wherever it stands
(inside a function, under ``TYPE_CHECKING``) and so does every string naming a module of the
package (``importlib.import_module("ctc_plugin.x")``, the lazy-export tables of ``__init__``
files, the command line's list of subcommand modules): hiding an import in a string does not
hide it from this test.

A node is a top-level module (``ctc_plugin.files``), a subpackage (``ctc_plugin.ctc``, all its
modules together) or the package's own ``__init__`` (``ctc_plugin``).
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ctc_plugin"
PACKAGE = ROOT.name
_MODULE_NAME = re.compile(rf"{PACKAGE}(\.\w+)*")


def module_name(path: Path) -> str:
    """``ctc_plugin/ctc/rules.py`` -> ``ctc_plugin.ctc.rules`` (``__init__`` -> the package)."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def node(module: str) -> str:
    """The graph node of a module: the package itself or its first-level child."""
    return ".".join(module.split(".")[:2])


def imported_modules(path: Path, names: set[str]) -> set[str]:
    """Every module of the package that ``path`` imports, by statement or by string."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for item in ast.walk(tree):
        if isinstance(item, ast.Import):
            found.update(alias.name for alias in item.names)
        elif isinstance(item, ast.ImportFrom):
            if item.level:
                base = package.split(".")[: len(package.split(".")) - (item.level - 1)]
                source = ".".join(base + ([item.module] if item.module else []))
            else:
                source = item.module or ""
            for alias in item.names:  # a submodule (``from ctc_plugin import zoo``) or a name
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in names else source)
        elif isinstance(item, ast.Constant) and isinstance(item.value, str):
            if _MODULE_NAME.fullmatch(item.value):
                found.add(item.value)
    # keep the names that are modules of the package (or their longest existing prefix)
    result = set()
    for name in found:
        while name and name not in names:
            name = name.rpartition(".")[0]
        if name:
            result.add(name)
    return result


def import_graph() -> dict[str, set[str]]:
    """Edges between nodes: ``a -> b`` when a module of ``a`` imports one of ``b``."""
    files = sorted(ROOT.rglob("*.py"))
    names = {module_name(path) for path in files}
    edges: dict[str, set[str]] = defaultdict(set)
    for path in files:
        source = node(module_name(path))
        for target in imported_modules(path, names):
            if node(target) != source:
                edges[source].add(node(target))
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of nodes (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(current: str) -> list[str] | None:
        state[current] = 1
        path.append(current)
        for following in sorted(edges.get(current, ())):
            if state.get(following) == 1:
                return path[path.index(following) :] + [following]
            if following not in state:
                cycle = visit(following)
                if cycle:
                    return cycle
        path.pop()
        state[current] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_graph_is_read_from_statements_and_strings(tmp_path):
    names = {"ctc_plugin", "ctc_plugin.a", "ctc_plugin.b", "ctc_plugin.b.c"}
    source = tmp_path / "ctc_plugin" / "a.py"
    source.parent.mkdir()
    source.write_text(
        "import importlib\n"
        "def f():\n"
        "    from ctc_plugin.b.c import x\n"
        "    return importlib.import_module('ctc_plugin.b')\n"
        "TABLE = {'name': 'ctc_plugin.b.c'}\n"
        "DOC = 'see ctc_plugin.b for more'\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path / "ctc_plugin"
    try:
        assert imported_modules(source, names) == {"ctc_plugin.b", "ctc_plugin.b.c"}
    finally:
        ROOT = saved


@pytest.mark.parametrize(
    ("edges", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}}, None),
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"d", "b"}}, ["b", "c", "b"]),
        ({"x": {"y"}, "a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ],
)
def test_find_cycle(edges, cycle):
    assert find_cycle(edges) == cycle


def tangles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle in each group of nodes that reach each other (all circles, not only the first)."""
    groups: list[list[str]] = []
    seen: set[str] = set()
    for start in sorted(edges):
        if start in seen:
            continue
        rest = {a: {b for b in edges[a] if b not in seen} for a in edges if a not in seen}
        cycle = find_cycle(rest)
        if cycle is None:
            break
        groups.append(cycle)
        seen.update(cycle)
    return groups


def test_tangles_lists_every_circle():
    edges = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}, "e": {"a"}}
    assert tangles(edges) == [["a", "b", "a"], ["c", "d", "c"]]


def test_no_cycle_between_subpackages():
    edges = import_graph()
    circles = tangles(edges)
    listing = "\n".join(f"  {a} -> {', '.join(sorted(b))}" for a, b in sorted(edges.items()))
    found = "\n".join("  " + " -> ".join(cycle) for cycle in circles)
    assert not circles, (
        f"import cycles between parts of the package:\n{found}\n"
        f"(every import counts, also inside functions and in strings); the graph:\n{listing}"
    )


ARCHITECTURE = ROOT.parent / "docs" / "architecture.md"
_ROW = re.compile(r"^\| (\d+): [^|]+\| ([^|]+)\| ([^|]+)\|$")


def documented_layers(text: str) -> tuple[dict[str, int], dict[str, set[str]]]:
    """The layer of each part and its imports, as the architecture page's table states them.

    A row reads ``| N: title | `a`, `b` | `a`: x, y; `b`: nothing |``; the parts are
    top-level modules and subpackages by their short names (``ctc_plugin.`` left out).
    """
    layers: dict[str, int] = {}
    imports: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = _ROW.match(line.strip())
        if not match:
            continue
        layer, parts, listed = int(match[1]), match[2], match[3]
        row = re.findall(r"`(\w+)`", parts)
        for part in row:
            assert part not in layers, f"{part} is in two rows of the layer table"
            layers[part] = layer
        for entry in listed.split(";"):
            name, _, names = entry.strip().partition(":")
            name = name.strip().strip("`")
            assert name in row, f"the imports of {name} are listed in the row of {row}"
            assert name not in imports, f"the imports of {name} are listed twice"
            imports[name] = {n.strip() for n in names.split(",")} - {"nothing"}
    return layers, imports


def test_documented_layers_reads_the_rows():
    text = (
        "| Layer | Parts | Imports |\n| --- | --- | --- |\n"
        "| 1: top | `a`, `b` | `a`: b, c; `b`: c |\n| 0: base | `c` | `c`: nothing |\n"
    )
    assert documented_layers(text) == (
        {"a": 1, "b": 1, "c": 0},
        {"a": {"b", "c"}, "b": {"c"}, "c": set()},
    )


def test_the_architecture_pages_layer_table_is_the_import_graph():
    layers, imports = documented_layers(ARCHITECTURE.read_text())
    short = {f"{PACKAGE}.{part}": part for part in layers} | {PACKAGE: PACKAGE}
    real = {
        short.get(a, a): {short.get(b, b) for b in targets} for a, targets in import_graph().items()
    }
    parts = {node(module_name(p)) for p in ROOT.rglob("*.py")}
    missing = sorted(parts - set(short))
    assert not missing, f"parts missing from the layer table of docs/architecture.md: {missing}"
    ghosts = sorted(set(short) - parts)
    assert not ghosts, f"the layer table of docs/architecture.md names no such parts: {ghosts}"
    unlisted = sorted(set(layers) - set(imports))
    assert not unlisted, f"the layer table lists no imports for {unlisted}"
    wrong = {
        part: (sorted(imports.get(part, set())), sorted(real.get(part, set())))
        for part in layers
        if imports.get(part, set()) != real.get(part, set())
    }
    assert not wrong, f"docs/architecture.md lists other imports (listed, real): {wrong}"
    upward = [
        f"{a} (layer {layers[a]}) -> {b} (layer {layers[b]})"
        for a, targets in real.items()
        if a in layers
        for b in targets
        if b in layers and layers[b] > layers[a]
    ]
    assert not upward, f"imports from a higher layer: {upward}"
    importers = sorted(a for a, targets in real.items() if PACKAGE in targets)
    assert importers == ["cli"], f"only cli.py may import the public API, not {importers}"


def private_imports_across_parts(path: Path) -> list[str]:
    """Private modules or names of another part that ``path`` imports (``_name``).

    Inside a part its modules may share private helpers; another part uses only what the part
    makes public. A part whose own name is private (``_moved``) is a part like any other.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    source = node(module_name(path))
    found = []
    for item in ast.walk(tree):
        if isinstance(item, ast.ImportFrom) and not item.level and item.module:
            modules, names = [item.module], [alias.name for alias in item.names]
        elif isinstance(item, ast.Import):
            modules, names = [alias.name for alias in item.names], []
        else:
            continue
        for module in modules:
            if not module.startswith(f"{PACKAGE}.") or node(module) == source:
                continue
            inner = module.split(".")[2:]  # the part's own name may be private
            private = [part for part in inner if part.startswith("_")]
            private += [name for name in names if name.startswith("_")]
            if private:
                found.append(f"{module_name(path)} imports {', '.join(private)} of {module}")
    return found


def test_no_part_imports_a_private_module_or_name_of_another():
    found = [
        line for path in sorted(ROOT.rglob("*.py")) for line in private_imports_across_parts(path)
    ]
    assert not found, "private names used outside their part:\n  " + "\n  ".join(found)


def test_private_imports_across_parts_are_found(tmp_path):
    global ROOT
    saved, ROOT = ROOT, tmp_path / PACKAGE
    source = ROOT / "a" / "m.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        f"from {PACKAGE}.b._inner import helper\n"
        f"from {PACKAGE}.b.outer import _helper, fine\n"
        f"from {PACKAGE}.a._own import shared\n"
        f"from {PACKAGE}._moved import moved_keywords\n"
    )
    try:
        assert private_imports_across_parts(source) == [
            f"{PACKAGE}.a.m imports _inner of {PACKAGE}.b._inner",
            f"{PACKAGE}.a.m imports _helper of {PACKAGE}.b.outer",
        ]
    finally:
        ROOT = saved
