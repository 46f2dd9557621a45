"""MkDocs hook: serve MathJax from an installed package, so formulas render without a network.

The ``django-static-mathjax`` distribution (no dependencies, despite its name) ships MathJax 3's
browser bundles as package data. This hook adds the SVG bundle and the TeX extensions it loads on
demand to the site under ``assets/mathjax/``; ``mkdocs.yml`` loads them after
``javascripts/mathjax-config.js``. SVG output needs no web fonts, so pages render from a local
folder (``file://``) as well as from a web server.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

SITE_FOLDER = "assets/mathjax"
BUNDLE = "tex-svg.js"
EXTENSIONS = "input/tex/extensions"


def mathjax_root() -> Path:
    """Return the folder of MathJax's ``es5`` bundles inside the installed package."""
    spec = importlib.util.find_spec("mathjax")
    if spec is not None and spec.origin is not None:
        root = Path(spec.origin).parent / "static" / "mathjax" / "es5"
        if (root / BUNDLE).is_file():
            return root
    raise PluginError(
        "MathJax's browser files were not found: the docs need the 'django-static-mathjax' "
        "package. Install the docs extra: pip install -e '.[docs]'"
    )


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add MathJax's SVG bundle and its TeX extensions to the site's files."""
    root = mathjax_root()
    sources = [root / BUNDLE, *sorted((root / EXTENSIONS).glob("*.js"))]
    for source in sources:
        uri = f"{SITE_FOLDER}/{source.relative_to(root).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files
