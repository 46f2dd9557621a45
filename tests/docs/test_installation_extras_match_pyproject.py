"""The installation page's table of extras lists every package that each extra installs.

``pyproject.toml`` is what pip installs; the table is what a reader decides by. The ``dev``
extra gained pycocotools (SAM's compressed RLE masks in the tests) without the table saying so.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib comes with Python 3.11")

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "installation.md"
#: How the table names a requirement whose distribution name a reader would not look for.
SHOWN_AS = {"django-static-mathjax": "MathJax", "mkdocstrings-python": "mkdocstrings"}


def requirement_name(requirement: str) -> str:
    """``"griffe-sphinx>=0.3; python_version >= '3.11'"`` -> ``"griffe-sphinx"``."""
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0)


def table_rows() -> dict[str, str]:
    """The table's rows by install command: ``{"pip install .": "...", ".[dev]": "..."}``."""
    rows = {}
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`") and cells[0] != "install":
            rows[cells[0].strip("`")] = cells[1]
    return rows


def missing_from_the_table() -> dict[str, list[str]]:
    """Per install command, the requirements its row of the table does not name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = {"pip install .": project["dependencies"]}
    for extra, requirements in project["optional-dependencies"].items():
        wanted[f".[{extra}]"] = requirements
    rows = table_rows()
    missing = {}
    for command, requirements in wanted.items():
        text = rows.get(command, "").lower()
        names = [SHOWN_AS.get(name, name) for name in map(requirement_name, requirements)]
        absent = [name for name in names if name.lower() not in text]
        if absent:
            missing[command] = absent
    return missing


def test_every_extra_s_packages_are_in_the_installation_table() -> None:
    assert {"pip install .", ".[dev]", ".[docs]"} <= set(table_rows())
    missing = missing_from_the_table()
    assert not missing, f"docs/installation.md's table of extras does not name {missing}"
