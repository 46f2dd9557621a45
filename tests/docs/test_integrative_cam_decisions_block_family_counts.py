"""The family counts "Integrative CAM decisions" gives for timm and transformers blocks.

The page says how many timm and Hugging Face ``transformers`` families Integrative CAM finds the
blocks of; the counts must be those the block tests check, one timm model per family in
``tests/cam/test_timm_blocks.py``'s ``FAMILIES`` and one square case per family in
``tests/cam/test_huggingface_blocks.py``'s ``CASES`` (its other cases, named ``"family, size"``,
repeat a family on a grid that is not square). The test files are read, not imported, so neither
library is needed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "integrative-cam-decisions.md"


def dict_keys(path: Path, name: str) -> list[str]:
    """The string keys of the module-level dict literal ``name`` in the Python file ``path``."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            return [key.value for key in node.value.keys]  # type: ignore[attr-defined]
    raise AssertionError(f"{path} has no dict {name}")


def test_block_family_counts_match_the_block_tests() -> None:
    """'the blocks of N timm and M Hugging Face families' names the tested counts."""
    timm = len(dict_keys(ROOT / "tests" / "cam" / "test_timm_blocks.py", "FAMILIES"))
    cases = dict_keys(ROOT / "tests" / "cam" / "test_huggingface_blocks.py", "CASES")
    huggingface = len([case for case in cases if "," not in case])
    text = " ".join(PAGE.read_text(encoding="utf-8").split())
    found = re.search(r"the blocks of (\d+) timm and (\d+) Hugging Face", text)
    assert found, "the page no longer says 'the blocks of N timm and M Hugging Face'"
    assert (int(found[1]), int(found[2])) == (timm, huggingface)
