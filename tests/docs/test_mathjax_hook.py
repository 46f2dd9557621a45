"""The MkDocs hook that serves MathJax from the installed package (docs/hooks/mathjax.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[docs]'")

from mkdocs.config.defaults import MkDocsConfig  # noqa: E402
from mkdocs.exceptions import PluginError  # noqa: E402
from mkdocs.structure.files import Files  # noqa: E402

HOOK = Path(__file__).resolve().parents[2] / "docs" / "hooks" / "mathjax.py"


def load_hook():
    spec = importlib.util.spec_from_file_location("mathjax_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_adds_the_bundle_and_its_extensions(tmp_path: Path) -> None:
    hook = load_hook()
    config = MkDocsConfig()
    config.load_dict({"site_name": "t", "docs_dir": str(tmp_path), "site_dir": str(tmp_path / "s")})
    config.validate()
    config.plugins._current_plugin = None  # as when MkDocs runs a hook outside a plugin
    files = hook.on_files(Files([]), config)
    uris = {file.src_uri for file in files}
    assert "assets/mathjax/tex-svg.js" in uris
    # the TeX extensions MathJax loads on demand (e.g. for \boldsymbol) travel with it
    assert "assets/mathjax/input/tex/extensions/boldsymbol.js" in uris
    for file in files:
        assert Path(file.abs_src_path).is_file(), file.abs_src_path


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = load_hook()
    monkeypatch.setattr(hook.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PluginError, match=r"django-static-mathjax.*pip install -e '\.\[docs\]'"):
        hook.mathjax_root()
