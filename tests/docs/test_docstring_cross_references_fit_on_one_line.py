"""Every cross-reference in the package's docstrings keeps its identifier on one line.

mkdocstrings renders ``[`Name`][ctc_plugin.module.Name]`` as a link; an identifier broken
across two lines (``[`WrappedModel`][ctc_plugin.module_paths.`` then ``WrappedModel]``) is
not resolved and shows as the raw brackets on the page, which the strict site build does not
catch (the module docstring of ``ctc_plugin.module_paths`` did).
"""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ctc_plugin"
#: The start of a reference's identifier that does not reach its closing bracket on the line.
BROKEN = re.compile(r"\]\[[\w.]*$", re.MULTILINE)


def test_no_cross_reference_identifier_is_broken_across_lines() -> None:
    broken = [
        f"{path.relative_to(PACKAGE.parent)}:{source.count(chr(10), 0, match.start()) + 1}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for source in [path.read_text(encoding="utf-8")]
        for match in BROKEN.finditer(source)
    ]
    assert not broken, f"put each cross-reference's identifier on one line: {broken}"
