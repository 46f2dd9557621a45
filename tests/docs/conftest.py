"""The built docs site, shared by the tests of this folder that read it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built site: ``$CTC_DOCS_SITE`` if set (``make test`` builds it once), else built here."""
    given = os.environ.get("CTC_DOCS_SITE")
    if given:
        path = Path(given).resolve()
        assert (path / "index.html").is_file(), f"CTC_DOCS_SITE={given} holds no built site"
        return path
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[docs]'")
    path = tmp_path_factory.mktemp("site")
    build = subprocess.run(  # noqa: S603 - our own build command
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(path)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr[-4000:]}"
    return path
