"""Fixtures the command-line tests share."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

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


@pytest.fixture
def photo(tmp_path):
    """A 40x30 photo (random pixels), ``tmp_path / "photo.png"``."""
    array = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(array).save(path)
    return path
