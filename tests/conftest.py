"""Suite-wide test settings."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# A reproducible suite: the same examples on every run and machine (CI never flakes on a new
# draw); set HYPOTHESIS_PROFILE=explore locally to search with fresh random examples.
settings.register_profile("reproducible", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reproducible"))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread per test (the suite's only thread fixture).

    pytest-xdist runs one process per core, and the tiny models of the tests lose badly to
    thread contention. Tests of thread counts set their own inside the test.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
