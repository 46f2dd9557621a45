"""Suite-wide test settings, and the benchmark script that several tests load."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

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


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` loaded as a module (its functions, without running it).

    The benchmarks' folder is on ``sys.path`` while it loads, for the modules it imports from
    beside it.
    """
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


@pytest.fixture(scope="module")
def bench_ctc():
    """``benchmarks/bench_ctc.py`` loaded as a module."""
    return load_benchmark("bench_ctc")


@pytest.fixture(scope="module")
def bench_sparse():
    """``benchmarks/bench_sparse.py`` loaded as a module."""
    return load_benchmark("bench_sparse")
