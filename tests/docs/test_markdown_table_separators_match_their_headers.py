"""Every Markdown table in docs/ has a separator row with as many cells as its header.

A separator row with fewer cells than the header makes Python-Markdown render the whole table
as one paragraph of pipes, which the strict site build does not catch.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
SEPARATOR = re.compile(r"\|(\s*:?-+:?\s*\|)+")


def cells(row: str) -> int:
    """Number of cells of a table row, leaving out escaped pipes and pipes inside code spans."""
    row = re.sub(r"\\\|", "", row.strip())
    row = re.sub(r"`[^`]*`", "", row)
    return len(row.strip("|").split("|"))


def mismatches(text: str) -> list[str]:
    """``line: header N, separator M`` for each table whose separator has the wrong width."""
    lines = text.split("\n")
    found = []
    for number, line in enumerate(lines[1:], start=2):
        if SEPARATOR.fullmatch(line.strip()) and lines[number - 2].strip().startswith("|"):
            header, separator = cells(lines[number - 2]), cells(line)
            if header != separator:
                found.append(f"line {number}: header {header}, separator {separator}")
    return found


def test_a_short_separator_is_found() -> None:
    """The check itself sees a 3-cell header over a 2-cell separator."""
    assert mismatches("| a | b | c |\n|---|---|\n| 1 | 2 | 3 |") == [
        "line 2: header 3, separator 2"
    ]
    assert mismatches("| a | `x \\| y` | c |\n|---|---|---|") == []


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: str(p.relative_to(DOCS)))
def test_separator_rows_match_headers(page: Path) -> None:
    """Each table's separator row has its header's cell count."""
    assert mismatches(page.read_text(encoding="utf-8")) == [], page
