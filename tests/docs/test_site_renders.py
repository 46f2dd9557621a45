"""The built documentation site, opened page by page in headless Chromium, reads as intended.

Every page of ``mkdocs build --strict`` is loaded from disk after MathJax has typeset it and its
images have loaded; the test fails on text a reader would see raw:

- TeX (``\\(``, ``\\[``, ``$$`` or a ``\\command``) outside code, or a formula MathJax rejected;
- a Sphinx role (``:class:``, ``:func:`` ...) outside code: docstrings use mkdocstrings
  cross-references instead;
- an image that did not load (missing file, or not an image);
- a ``>>>`` example run together as nested quotes instead of shown as code;
- a table wider than the page at 1400 px (split it);
- a Markdown table shown as raw pipes (its separator row has another cell count than its header);
- a backtick outside code: a code span that did not close (a docstring line inside one that
  starts with ``+ `` reads as a nested list item).

``make test`` builds the site once into ``site/`` and passes it in ``CTC_DOCS_SITE``; run alone,
the tests build their own copy (the ``site`` fixture of ``conftest.py``). Without Chromium
(``apt-get install -y chromium``; ``make setup`` installs it) the test is skipped with that
message.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from tests.docs.browser import Browser, find_chromium

ROOT = Path(__file__).resolve().parents[2]

# Runs in the page: [kind, what] for each problem a reader would see (see the file's comment).
INSPECT = (Path(__file__).parent / "inspect_page.js").read_text(encoding="utf-8")


def page_problems(browser: Browser, page: Path) -> list[tuple[str, str]]:
    """Open ``page`` and return ``(kind, what)`` for every problem a reader would see."""
    browser.open(page.as_uri())
    return [tuple(problem) for problem in browser.evaluate(INSPECT)]


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of the Chromium to drive; skips the module when there is none."""
    path = find_chromium()
    if path is None:
        pytest.skip(
            "Chromium not found: the browser docs test needs Debian's chromium "
            "(apt-get install -y chromium; `make setup` installs it) or CTC_CHROMIUM=/path"
        )
    return path


#: The pages are checked in this many parts, so that the two test workers share them.
PARTS = 2


@pytest.mark.parametrize("part", range(PARTS))
def test_every_page_renders(chromium: str, site: Path, part: int) -> None:
    every = sorted(site.rglob("*.html"))
    assert len(every) > 20, f"only {len(every)} pages in {site}"
    pages = every[part::PARTS]
    report = []
    with Browser(chromium) as browser:
        for page in pages:
            for kind, what in dict.fromkeys(page_problems(browser, page)):  # once each
                report.append(f"{page.relative_to(site)}: {kind}: {what}")
    assert not report, f"{len(report)} problems on the built site:\n" + "\n".join(report)


def documented(site: Path) -> dict[str, str]:
    """Every identifier of the site's ``objects.inv`` (mkdocstrings writes it) and its page."""
    data = (site / "objects.inv").read_bytes()
    start = 0
    for _ in range(4):  # four plain header lines, then the zlib-compressed entries
        start = data.index(b"\n", start) + 1
    entries = {}
    for line in zlib.decompress(data[start:]).decode().splitlines():
        name, _domain, _priority, uri, *_ = line.split(" ", 4)
        entries[name] = uri
    return entries


def test_every_exported_name_is_on_an_api_reference_page(site: Path) -> None:
    """What ``ctc_plugin`` and its subpackages export (``__all__``) is on the user pages."""
    griffe = pytest.importorskip("griffe", reason="griffe comes with the docs extra")
    package = griffe.load(
        "ctc_plugin", search_paths=[str(ROOT)], resolve_aliases=True, resolve_external=False
    )
    on_user_pages = {name for name, uri in documented(site).items() if uri.startswith("reference/")}
    packages = [package, *(m for m in package.modules.values() if not m.is_alias and m.is_package)]
    missing = []
    for module in packages:
        for name in module.exports or []:
            if name.startswith("__"):
                continue
            obj = module.members[name]
            spellings = {f"{module.path}.{name}", obj.canonical_path if obj.is_alias else obj.path}
            if not spellings & on_user_pages:
                missing.append(f"{module.path}.{name}")
    assert not missing, (
        "exported (in __all__) but on no docs/reference/ page; add a `::: name` there: "
        + ", ".join(missing)
    )


def test_inspection_sees_each_kind_of_problem(chromium: str, tmp_path: Path) -> None:
    """The checks fire on a page that has every problem, and not on the same text in code."""
    page = tmp_path / "page.html"
    wide_row = "".join(f"<th>column_{i}_with_a_long_name</th>" for i in range(40))
    page.write_text(
        """<!doctype html><html><body>
        <p>Raw display \\[ x^2 \\] and inline \\( y \\) here.</p>
        <p>Dollar display $$ z $$ here.</p>
        <p>A bare \\operatorname{mean} here.</p>
        <p>See :class:<code>Foo</code> and :func:<code>bar</code>.</p>
        <p><img src="missing.png"> <img src="not-an-image.png"></p>
        <blockquote><blockquote><p>&gt; from x import y</p></blockquote></blockquote>
        <table><tr>WIDE_ROW</tr></table>
        <p>| a | b | c | |---|---| | 1 | 2 | 3 |</p>
        <ul><li>A code span broken by a list: ``z = a</li><li>b``</li></ul>
        <pre><code>\\[ fine \\] $$ fine $$ :class:`Fine` \\frac |---|---| fine</code></pre>
        <p>Inline <code>:meth:`fine` \\(fine\\)</code> code is fine, and so is $5.</p>
        </body></html>""".replace("WIDE_ROW", wide_row),
        encoding="utf-8",
    )
    (tmp_path / "not-an-image.png").write_text("not a PNG", encoding="utf-8")
    with Browser(chromium) as browser:
        problems = page_problems(browser, page)
    kinds = sorted(kind.split(" (")[0] for kind, _ in problems)
    assert kinds == sorted(
        ["raw TeX"] * 3
        + ["raw Sphinx role"] * 2
        + ["broken image"] * 2
        + [">>> example shown as nested quotes"]
        + ["table wider than the page"]
        + ["table shown as raw pipes"]
        + ["raw backtick"] * 2
    ), problems
    assert not [what for _, what in problems if "fine" in what], problems
