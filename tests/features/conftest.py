"""Fixtures shared by the feature tests."""

from __future__ import annotations

from typing import Any

import pytest

from ctc_plugin.features import selection as selection_module


@pytest.fixture
def dbscan_fits(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments of every DBSCAN the feature selection builds, in order."""
    fits: list[dict[str, Any]] = []
    real = selection_module.DBSCAN

    def counting(**kwargs: Any) -> Any:
        fits.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(selection_module, "DBSCAN", counting)
    return fits
