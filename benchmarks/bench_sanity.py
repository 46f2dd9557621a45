"""Recompute the benchmark's ``sanity_rho`` column alone, as ``ctc-plugin benchmark`` computes it.

The sanity check is one stage of each benchmark piece (one method variant on one model); a full
run takes hours, this stage about a minute per model. This script plans the run with the
harness's own job (`BenchmarkJob`: the same `BenchmarkConfig` defaults, models, shipped
explainers, method registry and variants), prepares each model with the harness's runner (same
data split and images, superpixel and selected features) and computes each piece's
``sanity_rho`` with `BenchmarkRunner.sanity_rho`: the piece seeded from its name, its warm-up,
the per-image pass's first batch (whose maps are the original explanation, as in the full run)
and then `cascading_randomisation(..., max_steps=config.sanity_steps)` on the first
``robustness_images`` images, averaged with `finite_mean`.

The default covers the models of the Benchmarks page's tables that show ``sanity_rho``: the full
run's four families on both splits (all of its variants, Integrative CAM included), and, since
the plan takes every shipped explainer kind, the class-specific and distilled explainer runs on
``shapes``. Rows are appended to the CSV as they are computed; running the same command again
skips the pieces already there. The tables are printed in the report's format
(`ctc_plugin.harness.report.markdown_table`: three decimals, the best value in bold)::

    nice -n 10 python benchmarks/bench_sanity.py --threads 1 --out out/bench-sanity
    python benchmarks/bench_sanity.py --tables-only --out out/bench-sanity
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

from ctc_plugin.harness.benchmark import BenchmarkConfig, BenchmarkJob
from ctc_plugin.harness.methods import EXPLAINER_METHODS
from ctc_plugin.harness.report import _format, _means, markdown_table
from ctc_plugin.resumable.threads import torch_threads

FULL_RUN_FAMILIES = ("vgg", "resnet", "densenet", "inception")
FIELDS = ("family", "split", "method", "sanity_rho", "seconds", "error")
#: Rows of the separate explainer runs' tables on the Benchmarks page, next to their explainer.
NEIGHBOURS = (
    "Explainer",
    "GradCAM",
    "IntegrativeCAM",
    "CTC-proportional [superpixel]",
    "FeatureAblation [superpixel]",
)


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def compute(config: BenchmarkConfig, path: Path, threads: int) -> None:
    """Compute every planned piece's ``sanity_rho`` missing from ``path`` (appended to it)."""
    done = {(r["family"], r["split"], r["method"]) for r in _read(path)}
    job = BenchmarkJob(config, threads=threads)
    runner = job.runner()
    todo = [piece for piece in job.pieces if piece not in done]
    print(f"{len(job.pieces)} pieces planned, {len(todo)} to compute", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not path.is_file()
    with path.open("a", newline="") as stream, torch_threads(threads):
        writer = csv.DictWriter(stream, fieldnames=FIELDS)
        if fresh:
            writer.writeheader()
        for family, split, label in todo:
            started = time.perf_counter()
            error = ""
            try:
                rho = runner.sanity_rho(family, split, label)
            except Exception as exc:  # reported like the harness's failed pieces
                rho, error = math.nan, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            seconds = time.perf_counter() - started
            writer.writerow(
                {
                    "family": family,
                    "split": split,
                    "method": label,
                    "sanity_rho": repr(rho),
                    "seconds": f"{seconds:.1f}",
                    "error": error,
                }
            )
            stream.flush()
            print(f"{family}/{split} {label}: {rho:.4f} ({seconds:.0f} s) {error}", file=sys.stderr)


def _summary(rows: list[dict[str, str]], **where: object) -> list[dict[str, object]]:
    """Summary rows (``method``, ``sanity_rho``) of the models matching ``where``."""
    out = []
    for row in rows:
        if all(
            row[key] in value if isinstance(value, tuple) else row[key] == value
            for key, value in where.items()
        ):
            out.append({"method": row["method"], "sanity_rho": float(row["sanity_rho"])})
    return out


def _table(rows: list[dict[str, object]], labels: list[str] | None = None) -> str:
    means = _means(rows)
    if labels is not None:
        by_label = {entry["method"]: entry for entry in means}
        means = [by_label[label] for label in labels if label in by_label]
    return markdown_table(means, ["sanity_rho"])


def tables(path: Path) -> str:
    """The ``sanity_rho`` tables of the Benchmarks page, from the CSV at ``path``."""
    rows = _read(path)
    failed = [r for r in rows if r["error"]]
    full = [r for r in rows if r["family"] in FULL_RUN_FAMILIES]
    # the full run's variants: the default Explainer only (the other kinds ran separately)
    separate = set(EXPLAINER_METHODS.values()) - {"Explainer"}
    labels = list(dict.fromkeys(r["method"] for r in full if r["method"] not in separate))
    out = []
    for split in ("shapes", "composite"):
        models = {(r["family"], r["split"]) for r in full if r["split"] == split}
        if not models:
            continue
        out += [f"## `{split}` (mean over {len(models)} models)", ""]
        out += [_table(_summary(full, split=split), labels), ""]
    models = {(r["family"], r["split"]) for r in full}
    out += [f"## Mean over all {len(models)} models", "", _table(_summary(full), labels), ""]
    shapes = _summary(full, split="shapes")
    out += ["## Class-specific explainer table (mean over the `shapes` models)", ""]
    out += [_table(shapes, ["Explainer-class-specific", *NEIGHBOURS]), ""]
    first_three = _summary(full, split="shapes", family=("vgg", "resnet", "densenet"))
    out += ["## Distilled explainer table (mean over vgg, resnet, densenet on `shapes`)", ""]
    names = ["Explainer-distilled", "Explainer-class-specific", *NEIGHBOURS]
    out += [_table(first_three, names), ""]
    inception = _summary(full, split="shapes", family="inception")
    inception = [r for r in inception if r["method"] == "Explainer-distilled"]
    if inception:
        value = _format(float(inception[0]["sanity_rho"]))
        out += [f"inception/shapes Explainer-distilled: {value}", ""]
    out += ["## Per model", "", "| model | method | sanity_rho |", "|---|---|---|"]
    out += [
        f"| {r['family']}/{r['split']} | {r['method']} | {_format(float(r['sanity_rho']))} |"
        for r in rows
    ]
    if failed:
        out += ["", "## Failures", ""]
        out += [f"- {r['family']}/{r['split']} {r['method']}: {r['error']}" for r in failed]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="folder (default: out/bench-sanity[-quick])"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="resnet on shapes, 4 images (seconds to a minute; its own default folder)",
    )
    parser.add_argument("--families", nargs="+", default=list(FULL_RUN_FAMILIES))
    parser.add_argument("--splits", nargs="+", default=None, help="default: the config's")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every method")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--tables-only", action="store_true", help="only print the tables")
    args = parser.parse_args(argv)
    if args.out is None:  # a quick run's rows must not resume into the full run's table
        args.out = Path("out/bench-sanity-quick" if args.quick else "out/bench-sanity")
    path = args.out / "sanity.csv"
    if not args.tables_only:
        config = BenchmarkConfig()  # the full run's defaults
        changes: dict[str, object] = {"families": tuple(args.families)}
        if args.quick:
            changes.update(families=("resnet",), splits=("shapes",), images=4, robustness_images=4)
        if args.splits:
            changes["splits"] = tuple(args.splits)
        if args.methods:
            changes["methods"] = tuple(args.methods)
        compute(replace(config, **changes), path, args.threads)
    text = tables(path)
    (args.out / "sanity.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
