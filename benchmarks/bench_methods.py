"""Side-by-side run of every explanation method (quality, speed, memory) on the zoo models.

    python benchmarks/bench_methods.py [--quick] [--out DIR] [any `ctc-plugin benchmark` flag]

Without ``--out`` each run writes to a fresh ``out/bench_methods-<time>`` folder (the benchmark
resumes a folder that holds finished pieces, which would print old timings). Prints the Markdown
table of means; time per image is also given as a ratio to Captum's
FeatureAblation on the same features, measured in the same run (the peer CTC's cost is held to:
K + 1 forward passes). Methods without features are compared with the first FeatureAblation row.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from ctc_plugin.cli import main as cli_main


def cost_ratios(results_csv: Path) -> list[tuple[str, float, float]]:
    """Mean seconds per image per method, and the ratio to FeatureAblation on the same features."""
    rows = list(csv.DictReader(results_csv.open()))
    by_method: dict[str, list[float]] = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(float(row["seconds"]))
    means = {name: sum(v) / len(v) for name, v in by_method.items()}
    peers = {name.partition(" ")[2]: s for name, s in means.items() if name.startswith("FeatureA")}
    fallback = next(iter(peers.values()), float("nan"))
    out = []
    for name, seconds in means.items():
        peer = peers.get(name.partition(" ")[2], fallback)
        out.append((name, seconds, seconds / peer))
    return out


def main(argv: list[str]) -> int:
    out = Path(time.strftime("out/bench_methods-%Y%m%d-%H%M%S"))
    if "--out" in argv:
        out = Path(argv[argv.index("--out") + 1])
    else:
        argv = [*argv, "--out", str(out)]
    status = cli_main(["benchmark", *argv])
    if status:
        return status
    print((out / "results.md").read_text())
    print("\nTime per image, ratio to Captum FeatureAblation (same run):")
    print(f"{'method':40s} {'s/image':>10s} {'ratio':>8s}")
    for name, seconds, ratio in cost_ratios(out / "results.csv"):
        print(f"{name:40s} {seconds:10.4f} {ratio:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
