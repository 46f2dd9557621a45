"""Every error that an API reference page says a call raises is documented on a reference page.

``explain_dataset`` and its runner raise ``CLIError`` (the base of ``SourceError`` too), which
the data-set runs page named in its Raises tables and as a base class but no page documented:
the reader could not look up what it is or how to catch it. Python's own exceptions are not
checked. (A documented error may still show without a link, where the raising module does not
import its name; it is then found by name on the page.)
"""

from __future__ import annotations

import builtins
import re
from pathlib import Path

from tests.docs.test_site_renders import documented

#: A rendered ``Raises:`` table, and the first cell of each row: the exception's type.
RAISES_TABLE = re.compile(r'doc-section-title">Raises:</span>.*?</table>', re.S)
ROW_TYPE = re.compile(r'<tr class="doc-section-item">\s*<td>\s*(.*?)</td>', re.S)
#: A base class named by its path (``Bases: CLIError``).
BASE = re.compile(r'Bases:[^\n]*?<span title="(ctc_plugin\.[\w.]+)">')


def raised_errors(page_html: str) -> set[str]:
    """Short names of the package's errors that ``page_html`` names as raised or as a base."""
    names = set()
    for table in RAISES_TABLE.findall(page_html):
        for cell in ROW_TYPE.findall(table):
            names.add(re.sub(r"<[^>]+>", "", cell).strip().rsplit(".", 1)[-1])
    names |= {path.rsplit(".", 1)[-1] for path in BASE.findall(page_html)}
    return {name for name in names if not hasattr(builtins, name)}


def test_errors_named_on_the_reference_pages_are_documented(site: Path) -> None:
    on_reference_pages = {
        name.rsplit(".", 1)[-1] for name, uri in documented(site).items()
        if uri.startswith("reference/")
    }  # fmt: skip
    pages = sorted((site / "reference").rglob("index.html"))
    assert len(pages) > 10
    undocumented = {}
    for page in pages:
        missing = raised_errors(page.read_text(encoding="utf-8")) - on_reference_pages
        if missing:
            undocumented[str(page.parent.relative_to(site))] = sorted(missing)
    assert not undocumented, (
        "errors raised by documented calls but documented on no reference page (add a "
        f"`::: path.to.Error` where they are raised): {undocumented}"
    )


def test_the_check_reads_raises_tables_and_bases() -> None:
    page = (
        '<span class="doc-section-title">Raises:</span><table>'
        '<tr class="doc-section-item"><td><code>ValueError</code></td></tr>'
        '<tr class="doc-section-item"><td><code><a href="#x">SourceError</a></code></td></tr>'
        '<tr class="doc-section-item"><td>\n<code>ctc_plugin.x.RayError</code></td></tr>'
        '</table><p class="doc doc-class-bases">Bases: <code>'
        '<span title="ctc_plugin.commands.CLIError">CLIError</span></code></p>'
    )
    assert raised_errors(page) == {"SourceError", "RayError", "CLIError"}
