"""The user pages describe the code as it is; how it got there belongs in the design notes.

A user page that quotes numbers "measured when the sharing formulas still computed bfloat16
copies in bfloat16", says a value "before the fix", or tells what "a review found and
suspected" instead of what holds, describes code or an investigation that is over:
the reader cannot reproduce those numbers and cannot tell what holds now. Such history goes to
``docs/design-notes/`` (or ``docs/renames.md`` for names); a user page states what the code does
and, for each number, the command that measures it on the code of today.
"""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"

#: Phrases that narrate a change of the code rather than describe it.
HISTORY = re.compile(
    r"before the fix|was fixed|it had \w+ed only|now does\b|used to return"
    r"|a review (?:found|suspected)"
    r"|(?:when|while) (?:the|it|its) [\w ]{0,40}? still (?:\w+ed|ran|had|was|were|did|took|gave)\b",
    re.IGNORECASE,
)


def user_pages() -> list[Path]:
    """Every docs page but the design notes and the renames page."""
    return [
        page
        for page in sorted(DOCS.rglob("*.md"))
        if "design-notes" not in page.relative_to(DOCS).parts and page.name != "renames.md"
    ]


def history_phrases(text: str) -> list[str]:
    """The history phrases of ``text``, line breaks read as spaces."""
    return [match.group(0) for match in HISTORY.finditer(" ".join(text.split()))]


def test_user_pages_narrate_no_fixes() -> None:
    pages = user_pages()
    assert len(pages) > 20
    found = {
        str(page.relative_to(DOCS)): phrases
        for page in pages
        if (phrases := history_phrases(page.read_text(encoding="utf-8")))
    }
    assert not found, (
        "user pages narrate how the code changed; state what it does now (history goes to "
        f"docs/design-notes/): {found}"
    )


def test_the_phrases_are_seen_across_line_breaks() -> None:
    text = "gave (2026-12-06, when the sharing formulas\nstill computed bfloat16 copies) 8.2e-07"
    assert history_phrases(text) == ["when the sharing formulas still computed"]
    assert history_phrases("the 0.95 it had before the fix") == ["before the fix"]
    assert history_phrases("A review found a map 0.57 away") == ["A review found"]
    assert history_phrases("what the call used to return") == ["used to return"]
    assert history_phrases("the check randomises every parameter") == []
    assert history_phrases("stop it while the run is still running") == []


def test_renames_have_one_page() -> None:
    """Old spellings are listed on ``renames.md`` only; other pages link to it.

    The Explainer API page kept a table of its own with four rows the renames page lacked.
    """
    headings = {
        str(page.relative_to(DOCS))
        for page in user_pages()
        if re.search(r"^#+ Renamed", page.read_text(encoding="utf-8"), re.MULTILINE)
    }
    assert not headings, (
        f"rename tables outside docs/renames.md (move their rows there): {headings}"
    )
