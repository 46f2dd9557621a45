"""The launch-count table of "How CTC works" is what its command prints for one image.

The counts (ATen operations that would each be a kernel launch on a GPU, and host syncs) do not
depend on the CPU or the image values, so the page's one-image columns must equal the output of
the command it names. (The 16-image column takes far longer and is not checked here.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "how-ctc-works.md"
COMMAND = [
    "benchmarks/bench_ctc.py", "--model", "resnet50", "--features", "64", "--size", "64",
    "--repeats", "1", "--threads", "1", "--no-variants", "--launches",
]  # fmt: skip
#: the page's row names and the benchmark's
ROWS = {
    "plain forward of the K + 1 copies": "plain forward x (K+1)",
    "Captum `FeatureAblation`": "captum FeatureAblation",
    'CTC `"none"`': "CTC none",
    'CTC `"proportional"`': "CTC proportional",
    'CTC `"reference"`': "CTC reference",
}


def page_rows(text: str) -> dict[str, tuple[str, str, str]]:
    """Benchmark row name -> (launches, / FeatureAblation, host syncs) of the page's table."""
    found = {}
    for line in text.split("\n"):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in ROWS:
            found[ROWS[cells[0]]] = (cells[1], cells[2], cells[3])
    return found


def printed_rows(output: str) -> dict[str, tuple[str, str, str]]:
    """Benchmark row name -> (launches, / FeatureAblation, host syncs) as the command prints.

    The benchmark prints no ratio for the rows before FeatureAblation's; it is computed here the
    way the benchmark computes the others (two decimals).
    """
    table = output.split("one call of", 1)[1]
    counts = {}
    for name in ROWS.values():
        numbers = re.search(rf"^{re.escape(name)}\s+(\d+)\s+(?:[\d.]+\s+)?(\d+)\s*$", table, re.M)
        assert numbers, f"no launches row {name!r} in:\n{table}"
        counts[name] = (int(numbers[1]), int(numbers[2]))
    ablation = counts["captum FeatureAblation"][0]
    return {
        name: (str(launches), f"{launches / ablation:.2f}", str(syncs))
        for name, (launches, syncs) in counts.items()
    }


def test_page_rows_are_read() -> None:
    """The parser finds all five rows of the page's table."""
    assert set(page_rows(PAGE.read_text(encoding="utf-8"))) == set(ROWS.values())


def test_printed_rows_are_read() -> None:
    """The parser reads the benchmark's launches table, the first row without a ratio."""
    output = "method ...\none call of  launches  / FeatureAblation  host syncs\n" + "\n".join(
        f"{name:32s} {launches:9d} {ratio:>18s} {syncs:11d}"
        for name, launches, ratio, syncs in [
            ("plain forward x (K+1)", 10, "", 0),
            ("captum FeatureAblation", 40, "1.00", 7),
            ("CTC none", 30, "0.75", 4),
            ("CTC proportional", 50, "1.25", 3),
            ("CTC reference", 90, "2.25", 3),
        ]
    )
    assert printed_rows(output) == {
        "plain forward x (K+1)": ("10", "0.25", "0"),
        "captum FeatureAblation": ("40", "1.00", "7"),
        "CTC none": ("30", "0.75", "4"),
        "CTC proportional": ("50", "1.25", "3"),
        "CTC reference": ("90", "2.25", "3"),
    }


@pytest.mark.slow
def test_launch_counts_on_the_page_are_the_commands_output() -> None:
    """Launches, their ratio to FeatureAblation and host syncs, one image, as printed."""
    result = subprocess.run(
        [sys.executable, *COMMAND], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert page_rows(PAGE.read_text(encoding="utf-8")) == printed_rows(result.stdout)
