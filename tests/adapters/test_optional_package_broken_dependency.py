"""An optional package that is installed but fails to import is not called "not installed"."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctc_plugin.adapters.optional import require


def _sam2_modules() -> list[str]:
    return [name for name in sys.modules if name == "sam2" or name.startswith("sam2.")]


@pytest.fixture
def broken_sam2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A ``sam2`` package on the path whose ``build_sam`` imports a dependency that is absent."""
    package = tmp_path / "sam2"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "build_sam.py").write_text("import hydra_dependency_not_installed\n")
    for name in _sam2_modules():
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in _sam2_modules():  # the stand-in must not outlive the test
        del sys.modules[name]


def test_missing_dependency_of_an_installed_package_is_named(broken_sam2):
    from ctc_plugin.adapters.sam2 import SAM2Segmenter

    with pytest.raises(ImportError) as caught:
        SAM2Segmenter(checkpoint="sam2.1_hiera_tiny.pt", cache=None)
    message = str(caught.value)
    assert "hydra_dependency_not_installed" in message and "not installed (`pip" not in message
    assert "'sam2.build_sam'" in message


def test_a_package_that_is_absent_still_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sam2", None)
    with pytest.raises(ImportError, match=r"not installed \(`pip install sam2`\)"):
        require("sam2.build_sam", "sam2", "SAM2Segmenter")
    with pytest.raises(ImportError, match=r"not installed \(`pip install x-pkg`\)"):
        require("package_that_does_not_exist_here.sub", "x-pkg", "Thing")
