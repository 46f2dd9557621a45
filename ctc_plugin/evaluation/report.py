"""Writing the benchmark's results: CSV files, Markdown tables and plots."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["COLUMNS", "ModelRun", "finite_mean", "write_report", "markdown_table"]

#: Result columns: name -> (description, which direction is better).
COLUMNS: dict[str, tuple[str, str]] = {
    "pointing": ("pointing game hit rate", "higher"),
    "mass": ("relevance mass accuracy", "higher"),
    "rank": ("relevance rank accuracy", "higher"),
    "iou": ("IoU of the map thresholded at 50% of its maximum", "higher"),
    "f1": ("F1 of the same thresholded map", "higher"),
    "deletion_px": ("MoRF deletion AUC, pixels, probability", "lower"),
    "insertion_px": ("MoRF insertion AUC, pixels, probability", "higher"),
    "deletion_seg": ("MoRF deletion AUC, superpixels", "lower"),
    "insertion_seg": ("MoRF insertion AUC, superpixels", "higher"),
    "seconds": ("seconds per image", "lower"),
    "memory_mib": ("peak memory above the start, MiB", "lower"),
    "dist_kept": ("protocol L2 distance, prediction kept", "lower"),
    "dist_changed": ("protocol L2 distance, prediction changed", "higher"),
    "welch_t": ("Welch t, changed vs kept", "higher"),
    "input_shift": ("relative L1 change under a compensated input shift", "lower"),
    "max_sens": ("max-sensitivity, radius 0.02", "lower"),
    "sanity_rho": ("Spearman rho after randomising all layers", "lower"),
}


@dataclass
class ModelRun:
    """Everything the benchmark computed for one model and split.

    Attributes:
        family: Zoo family.
        split: Data split.
        accuracy: The model's accuracy on the benchmark images.
        rows: Per-image rows.
        summary: One row per method variant (means and robustness metrics).
        curves: ``{variant: {"deletion"|"insertion": (N, S + 1) scores}}``.
        errors: One line per method variant that raised.
    """

    family: str
    split: str
    accuracy: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [key for key in row if key not in keys]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _format(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value == 0 or 0.01 <= abs(value) < 1000:
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value:.2e}"


def finite_mean(values: np.ndarray) -> float:
    """Mean of the finite entries (NaN when there are none), without NumPy's warning."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan


def _means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean of each column per method, over the given summary rows (NaN-aware)."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[str(row["method"])].append(row)
    out = []
    for method, group in grouped.items():
        entry: dict[str, Any] = {"method": method, "models": len(group)}
        for key in COLUMNS:
            entry[key] = finite_mean([float(r.get(key, math.nan)) for r in group])
        out.append(entry)
    return out


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Render method rows as a Markdown table; the best value of each column is in bold.

    Args:
        rows: Dicts with ``"method"`` and metric keys from `COLUMNS`.
        columns: Metric keys to show (default: every key of `COLUMNS` present in a row).
    """
    columns = [c for c in (columns or list(COLUMNS)) if any(c in row for row in rows)]
    arrows = {"higher": "↑", "lower": "↓"}
    header = "| method | " + " | ".join(f"{c} {arrows[COLUMNS[c][1]]}" for c in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    best = {}
    for column in columns:
        values = [float(r.get(column, math.nan)) for r in rows]
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            best[column] = max(finite) if COLUMNS[column][1] == "higher" else min(finite)
    for row in rows:
        cells = []
        for column in columns:
            value = float(row.get(column, math.nan))
            text = _format(value)
            cells.append(
                f"**{text}**" if math.isfinite(value) and value == best.get(column) else text
            )
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot_curves(runs: list[ModelRun], path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    merged: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for label, curves in run.curves.items():
            for kind, values in curves.items():
                merged[label][kind].append(values)
    grid = np.linspace(0, 1, steps + 1)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    colours = plt.get_cmap("tab20")
    for index, (label, curves) in enumerate(merged.items()):
        style = "-" if index < 20 else "--"
        for axis, kind in zip(axes, ("deletion", "insertion")):
            if curves.get(kind):
                mean = np.concatenate(curves[kind]).mean(axis=0)
                axis.plot(grid, mean, style, color=colours(index % 20), label=label, lw=1.4)
    for axis, kind in zip(axes, ("deletion (MoRF)", "insertion (MoRF)")):
        axis.set_title(f"Pixel {kind}, mean over images and models")
        axis.set_xlabel("fraction of pixels")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("target probability")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_scatter(means: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(8, 6))
    for row in means:
        x, y = row.get("dist_kept", math.nan), row.get("dist_changed", math.nan)
        if math.isfinite(x) and math.isfinite(y):
            ours = str(row["method"]).startswith(("CTC", "IntegrativeCAM", "Explainer"))
            axis.scatter(x, y, marker="*" if ours else "o", s=90 if ours else 40)
            axis.annotate(
                row["method"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    axis.set_xlabel("L2 distance when the prediction is kept (invariance: lower is better)")
    axis.set_ylabel("L2 distance when the prediction changes (sensitivity: higher is better)")
    axis.set_title("CTC protocol (fixed): invariance vs sensitivity, mean over models")
    axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    runs: list[ModelRun],
    config: Any,
    out: Path,
    elapsed: float,
    machine: str,
    notes: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Write ``per_image.csv``, ``results.csv``, ``results.md`` and the two plots.

    Args:
        runs: One `ModelRun` per model and split.
        config: The benchmark configuration (a dataclass), recorded in the Markdown file.
        out: Output folder.
        elapsed: Wall-clock seconds of the run.
        machine: One line describing the machine.
        notes: Extra lines for the "Failures" section (e.g. models that were skipped).

    Returns:
        The summary rows written to ``results.csv``.
    """
    summary = [row | {"accuracy": run.accuracy} for run in runs for row in run.summary]
    _write_csv(out / "per_image.csv", [row for run in runs for row in run.rows])
    _write_csv(out / "results.csv", summary)
    means = _means(summary)
    settings = ", ".join(f"{k}={v}" for k, v in asdict(config).items())
    parts = [
        "# Benchmark results",
        "",
        f"Machine: {machine}. Wall-clock time: {elapsed / 60:.1f} min.",
        "",
        f"Configuration: {settings}.",
        "",
        "## Models",
        "",
        "| model | split | accuracy on the benchmark images |",
        "|---|---|---|",
        *[f"| {run.family} | {run.split} | {run.accuracy:.3f} |" for run in runs],
        "",
        "## Mean over all models and splits",
        "",
        markdown_table(means),
        "",
    ]
    for split in dict.fromkeys(run.split for run in runs):
        parts += [
            f"## Split `{split}` (mean over families)",
            "",
            markdown_table(_means([row for row in summary if row["split"] == split])),
            "",
        ]
    parts += ["## Columns", ""]
    parts += [f"- `{key}`: {text} ({better} is better)" for key, (text, better) in COLUMNS.items()]
    errors = list(notes or []) + [line for run in runs for line in run.errors]
    parts += ["", "## Failures", ""] + ([f"- {line}" for line in errors] or ["None."])
    (out / "results.md").write_text("\n".join(parts) + "\n")
    _plot_curves(runs, out / "curves.png", getattr(config, "curve_steps", 20))
    _plot_scatter(means, out / "invariance_sensitivity.png")
    return summary
