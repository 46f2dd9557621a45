"""An installed optional package whose import raises a bare ImportError is not "not installed".

Before, ``require`` decided "installed" from the error's ``name``: a version guard
(``raise ImportError("... needs torch>=9")``, no ``name``) was reported as a package that is not
installed, with ``pip install`` as the advice.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ctc_plugin.adapters.optional import require

PACKAGE = "ctc_plugin_test_guarded_pkg"


def test_a_version_guard_is_named_not_called_missing(tmp_path: Path, monkeypatch):
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text(f'raise ImportError("{PACKAGE} needs torch>=9")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, PACKAGE, raising=False)
    with pytest.raises(ImportError) as caught:
        require(PACKAGE, "guarded-pkg", "SomeSegmenter")
    message = str(caught.value)
    assert "it is installed" in message and "needs torch>=9" in message
    assert "not installed" not in message
