"""``benchmarks/bench_sparse.py``: what ``--memory`` and ``--fresh-memory`` read and print.

``--memory`` runs each method once in a fresh process, which prints the call's peak memory
above the process's (KiB) and its seconds; `first_call` reads both back. ``--fresh-memory``
times zeroing fresh memory as the sparse pass gets it and with huge pages asked for.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_first_call_reads_the_peak_and_the_seconds_of_a_fresh_process(bench_sparse, monkeypatch):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("--memory reads Linux's /proc/self/status")
    commands = []

    def run(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, stdout="some warning\n20480 3.25\n")

    monkeypatch.setattr(bench_sparse.subprocess, "run", run)
    args = argparse.Namespace(
        model="resnet18", size=112, features=16, mask="grid", threads=1, torch_formula=False,
        spare_chunks=0,
    )  # fmt: skip
    assert bench_sparse.first_call(args, "CTC reference, sparse") == (20.0, 3.25)
    (command,) = commands
    assert command[2:4] == ["--only", "CTC reference, sparse"]
    assert command[command.index("--features") + 1] == "16"
    assert command[command.index("--spare-chunks") + 1] == "0"  # the header says what ran


@pytest.mark.slow
def test_only_prints_the_peak_and_the_seconds_of_one_call():
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("--memory reads Linux's /proc/self/status")
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_sparse.py"), "--quick"]
    command += ["--only", "CTC proportional, sparse"]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    peak_kib, seconds = result.stdout.split()[-2:]
    assert int(peak_kib) >= 0 and float(seconds) > 0


@pytest.mark.parametrize("huge", [False, True])
def test_zeroing_fresh_memory_is_timed_with_and_without_huge_pages(bench_sparse, huge):
    assert bench_sparse.zero_fresh_memory(nbytes=8 << 20, huge=huge) > 0
