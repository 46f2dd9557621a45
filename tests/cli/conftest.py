"""Fixtures the command-line tests share."""

from __future__ import annotations

import pytest

from ctc_plugin.commands import methods


@pytest.fixture
def methods_run(monkeypatch) -> list[str]:
    """The names of the methods that ran, in order (each still runs)."""
    calls: list[str] = []
    original = methods.run_method

    def recording(name, request):
        calls.append(name)
        return original(name, request)

    monkeypatch.setattr(methods, "run_method", recording)
    return calls
