"""Every Python code block of the tutorials, the quickstart, the inputs and threads pages and the
README runs.

Blocks run in page order, in one namespace per page.

A tutorial that stops working fails the suite. Blocks fenced as ```python run; ```text, ```bash
and others are shown only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "docs" / "tutorials"
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(page: Path) -> list[str]:
    """Return the Python blocks of a Markdown page, in order."""
    return BLOCK.findall(page.read_text(encoding="utf-8"))


PAGES = sorted(TUTORIALS.glob("*.md")) + [
    ROOT / "docs" / "quickstart.md",
    ROOT / "docs" / "inputs.md",
    ROOT / "docs" / "threads.md",
    ROOT / "README.md",
]


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_tutorial_runs(page: Path, tmp_path: Path) -> None:
    blocks = python_blocks(page)
    assert blocks, f"{page.name} has no ```python block to run"
    namespace: dict = {"__name__": f"tutorial_{page.stem}"}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # tutorials write their figures into a scratch folder
    try:
        for index, block in enumerate(blocks):
            code = compile(block, f"{page.name}[block {index}]", "exec")
            exec(code, namespace)  # noqa: S102 - executing our own documentation is the test
    finally:
        os.chdir(cwd)
