"""``benchmarks/bench_precision.py --formulas``: the compiled and torch's "reference" formulas."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_formulas_prints_three_finite_differences(capsys, monkeypatch):
    from ctc_plugin.ctc import native

    if native.unavailable_reason() is not None:
        pytest.skip(f"no compiled formula here: {native.unavailable_reason()}")
    spec = importlib.util.spec_from_file_location(
        "bench_precision", ROOT / "benchmarks" / "bench_precision.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", ["bench_precision.py", "--formulas", "--size", "16"])
    bench.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == 'resnet18, 2 images of 16x16, 16 features, float32 "reference"'
    labels = [line[:28].strip() for line in lines[1:]]
    assert labels == [
        "compiled vs torch's formula",
        "compiled vs spec pass",
        "torch's vs spec pass",
    ]
    values = [float(line[28:]) for line in lines[1:]]
    assert all(math.isfinite(v) and v >= 0 for v in values)
