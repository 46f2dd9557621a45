"""Optional SAM 2 and MobileSAM adapters: a missing package is a clear ImportError."""

from __future__ import annotations

import importlib.util
import sys

import pytest


@pytest.mark.parametrize(
    "module, cls, package, pip_hint",
    [
        ("ctc_plugin.adapters.sam2", "SAM2Segmenter", "sam2", "pip install sam2"),
        ("ctc_plugin.adapters.mobile_sam", "MobileSAMSegmenter", "mobile_sam", "MobileSAM"),
    ],
)
def test_missing_package_names_what_to_install(monkeypatch, module, cls, package, pip_hint):
    adapter = importlib.import_module(module)  # importing the adapter itself needs nothing
    monkeypatch.setitem(sys.modules, package, None)  # make the import fail even if installed
    with pytest.raises(ImportError, match=pip_hint):
        getattr(adapter, cls)(checkpoint="model.pt")


@pytest.mark.skipif(importlib.util.find_spec("sam2") is None, reason="sam2 is not installed")
def test_sam2_needs_a_checkpoint():  # pragma: no cover - only where sam2 is installed
    from ctc_plugin.adapters.sam2 import SAM2Segmenter

    with pytest.raises(ValueError, match="checkpoint="):
        SAM2Segmenter()


@pytest.mark.skipif(
    importlib.util.find_spec("mobile_sam") is None, reason="mobile_sam is not installed"
)
def test_mobile_sam_needs_a_checkpoint():  # pragma: no cover - only where mobile_sam is installed
    from ctc_plugin.adapters.mobile_sam import MobileSAMSegmenter

    with pytest.raises(ValueError, match="checkpoint="):
        MobileSAMSegmenter()
