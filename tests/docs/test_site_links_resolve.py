"""Every link and image of the built docs site points at a page, file and heading that exist.

``mkdocs build --strict`` checks that a linked page exists, but not every ``#anchor``: a link to
a heading that was renamed (``[...](evaluation.md#max-sensitivity)`` after the heading became
"Max-sensitivity and cost") still builds and lands at the top of the page. This test reads the
built HTML (no browser), collects the ``id`` of every element of every page, and checks each
relative ``href`` and ``src`` of ``<a>`` and ``<img>``: its file exists in the site, and its
fragment is an ``id`` on the page it names (on its own page for ``#...`` alone).
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _PageLinks(HTMLParser):
    """The ``id``\\ s of one HTML page and its ``(tag, url)`` links."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        if tag == "a" and values.get("name"):
            self.ids.add(values["name"])
        url = values.get("href") if tag == "a" else values.get("src") if tag == "img" else None
        if url:
            self.links.append((tag, url))


def read_pages(site: Path) -> dict[Path, _PageLinks]:
    """Each HTML page of ``site`` (not MkDocs' 404 page, whose links are root-absolute)."""
    pages = {}
    for path in sorted(site.rglob("*.html")):
        if path.name == "404.html" or "assets" in path.relative_to(site).parts:
            continue
        parsed = _PageLinks()
        parsed.feed(path.read_text(encoding="utf-8"))
        pages[path.resolve()] = parsed
    return pages


def dead_links(site: Path) -> list[str]:
    """``page: url (why)`` for every relative link or image of ``site`` that leads nowhere."""
    pages = read_pages(site)
    dead = []
    for page, parsed in pages.items():
        for _tag, url in parsed.links:
            parts = urlsplit(url)
            if parts.scheme or url.startswith("//"):
                continue  # http(s), mailto, data: not checked here
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            where = f"{page.relative_to(site)}: {url}"
            if not target.exists():
                dead.append(f"{where} (no such file)")
            elif parts.fragment and target in pages:
                if unquote(parts.fragment) not in pages[target].ids:
                    dead.append(f"{where} (no heading or element with that id)")
    return dead


def test_every_link_and_anchor_of_the_site_resolves(site: Path) -> None:
    assert len(read_pages(site)) > 20
    dead = dead_links(site)
    assert not dead, f"{len(dead)} links lead nowhere:\n" + "\n".join(dead)


def test_the_check_sees_a_missing_page_a_missing_image_and_a_dead_anchor(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "index.html").write_text(
        '<h1 id="top">A</h1><h2 id="kept">Kept</h2>'
        '<a href="#kept">fine</a> <a href="../b/#top">fine</a> <a href="https://x.org/#y">fine</a>'
        '<a href="#renamed">dead</a> <a href="../b/#gone">dead</a> <a href="../c/">dead</a>'
        '<img src="../img/missing.png">',
        encoding="utf-8",
    )
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "index.html").write_text('<h1 id="top">B</h1>', encoding="utf-8")
    dead = dead_links(tmp_path)
    assert sorted(dead) == sorted(
        [
            "a/index.html: #renamed (no heading or element with that id)",
            "a/index.html: ../b/#gone (no heading or element with that id)",
            "a/index.html: ../c/ (no such file)",
            "a/index.html: ../img/missing.png (no such file)",
        ]
    ), dead
