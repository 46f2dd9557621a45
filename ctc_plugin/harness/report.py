"""Writing the benchmark's results (CSV files, Markdown tables, plots) from its stored pieces."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctc_plugin.harness.store import BenchmarkStore, Piece, run_order
from ctc_plugin.resumable.atomic import write_atomic
from ctc_plugin.wording import counted

__all__ = [
    "COLUMNS",
    "Coverage",
    "ModelRun",
    "finite_mean",
    "write_report",
    "write_stored_report",
    "markdown_table",
    "markdown_tables",
    "COLUMN_GROUPS",
]

#: Result columns: name -> (description, which direction is better: "higher", "lower" or
#: "nearer 0").
COLUMNS: dict[str, tuple[str, str]] = {
    "pointing": ("pointing game hit rate", "higher"),
    "mass": (
        "relevance mass accuracy; a map without positive relevance has none and is left out of "
        "the mean, where the pointing game counts it as a miss",
        "higher",
    ),
    "rank": (
        "relevance rank accuracy; pixels tied at the K-th value count by their share inside "
        "the evidence",
        "higher",
    ),
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
    "sanity_rho": (
        "Spearman rho after randomising all layers; an image whose map is constant (no "
        "ranking) is left out of the mean",
        "nearer 0",
    ),
}

#: How ``results.md`` splits the columns into tables narrow enough to read on one screen
#: (1400 px): group title -> column keys. Every key of `COLUMNS` is in exactly one group.
COLUMN_GROUPS: dict[str, tuple[str, ...]] = {
    "Localisation": ("pointing", "mass", "rank", "iou", "f1"),
    "Faithfulness": ("deletion_px", "insertion_px", "deletion_seg", "insertion_seg"),
    "Robustness": ("dist_kept", "dist_changed", "welch_t", "input_shift", "max_sens", "sanity_rho"),
    "Cost": ("seconds", "memory_mib"),
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


@dataclass(frozen=True)
class Coverage:
    """How much of one model's planned work is finished.

    Attributes:
        family: Zoo family.
        split: Data split.
        finished: Method variants finished (computed or failed).
        planned: Method variants planned; ``None`` when the model's run has not started.
        skipped: Why the model was skipped (e.g. no weights), or ``None``.
    """

    family: str
    split: str
    finished: int
    planned: int | None
    skipped: str | None = None

    @property
    def complete(self) -> bool:
        """True when every planned variant is finished (a skipped model counts as done)."""
        return self.skipped is not None or (
            self.planned is not None and self.finished == self.planned
        )

    @property
    def status(self) -> str:
        """``"complete"``, ``"skipped"``, ``"not started"`` or ``"k of m variants"``."""
        if self.skipped is not None:
            return "skipped"
        if self.planned is None:
            return "not started"
        if self.complete:
            return "complete"
        return f"in progress: {self.finished} of {self.planned} variants"


def _completeness(coverage: list[Coverage], settings: Mapping[str, Any]) -> list[str]:
    images = settings.get("images")
    robust = settings.get("robustness_images")
    done = sum(c.complete and c.skipped is None for c in coverage)
    lines = ["## Completeness", ""]
    covered = _images_covered(images, robust)
    if all(c.complete for c in coverage):
        lines.append(
            f"Complete: {counted(done, 'model')}, every planned method variant on {covered}."
        )
    else:
        lines.append(
            f"**Partial report.** {done} of {len(coverage)} models are complete; the mean tables "
            "cover the complete models only, and each model still in progress has a table of "
            f"its finished variants. Every finished variant covers {covered}. Resume the run to "
            "complete it."
        )
    lines += ["", "| model | split | status |", "|---|---|---|"]
    lines += [f"| {c.family} | {c.split} | {c.status} |" for c in coverage]
    return lines + [""]


def _images_covered(images: Any, robust: Any) -> str:
    """``all 24 images (robustness metrics on the first 8)``, or its words for 1 and 0."""
    if images == 1:
        where = "it" if robust else "none"
        return f"the 1 image (robustness metrics on {where})"
    if not robust:
        return f"all {images} images (robustness metrics on none)"
    return f"all {images} images (robustness metrics on the first {robust})"


def _cost_table(costs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Cost of the run",
        "",
        "Wall-clock seconds of the whole benchmark pipeline per method variant, mean over the "
        "models it finished on: per image (explanation, localisation, deletion and insertion "
        "curves) and per robustness image (protocol with re-segmentation, input invariance, "
        "max-sensitivity, sanity check), and minutes per model (everything, warm-up included).",
        "",
        "| method | models | s per image | s per robustness image | min per model |",
        "|---|---|---|---|---|",
    ]
    for row in costs:
        cells = [_format(row[key]) for key in ("per_image", "per_robustness_image", "minutes")]
        lines.append(f"| {row['method']} | {row['models']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [key for key in row if key not in keys]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    _write_text(path, text.getvalue())


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a reader never sees half a report file."""
    data = text.encode()
    write_atomic(path, lambda stream: stream.write(data))


def _save_figure(fig: Any, path: Path) -> None:
    """Save a Matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    write_atomic(path, lambda stream: fig.savefig(stream, dpi=110, format="png"))
    plt.close(fig)


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


def _by_method(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows of each method, methods in order of first appearance."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[str(row["method"])].append(row)
    return grouped


def _means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean of each column per method, over the given summary rows (NaN-aware)."""
    out = []
    for method, group in _by_method(rows).items():
        entry: dict[str, Any] = {"method": method, "models": len(group), "counts": {}}
        for key in COLUMNS:
            values = [float(r.get(key, math.nan)) for r in group]
            entry[key] = finite_mean(values)
            entry["counts"][key] = sum(math.isfinite(value) for value in values)
        out.append(entry)
    return out


#: The quality columns measured per image (localisation and faithfulness), whose standard
#: errors the report gives.
PER_IMAGE_QUALITY = [
    "pointing", "mass", "rank", "iou", "f1",
    "deletion_px", "insertion_px", "deletion_seg", "insertion_seg",
]  # fmt: skip

#: What the standard-error table of a report says.
STANDARD_ERROR_NOTE = (
    "The standard error of each method's mean above over its images (the images of all the "
    "models pooled: sample standard deviation / √n). Two methods whose means differ by less "
    "than about twice these are not told apart by these images (their paired difference on "
    "the same images varies somewhat less). The deletion and insertion AUCs also move with the "
    "seed that breaks ties in relevance."
)


def standard_errors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The standard error of each method's mean over its images, per `PER_IMAGE_QUALITY` column.

    Args:
        rows: Per-image rows (those of ``per_image.csv``) with ``"method"`` and the columns;
            values that are not finite (a NaN mass accuracy) are left out.

    Returns:
        One row per method, in order of first appearance: ``"method"`` and the sample standard
        deviation (``ddof=1``) of each column over its images divided by the square root of
        their number (NaN with fewer than two values).
    """
    out = []
    for method, group in _by_method(rows).items():
        entry: dict[str, Any] = {"method": method}
        for key in PER_IMAGE_QUALITY:
            values = np.asarray([float(r.get(key, math.nan)) for r in group], dtype=float)
            values = values[np.isfinite(values)]
            error = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan
            entry[key] = float(error)
        out.append(entry)
    return out


#: How each direction of `COLUMNS` is marked in a table's header.
ARROWS = {"higher": "↑", "lower": "↓", "nearer 0": "→0"}


def best_value(values: list[float], better: str) -> float:
    """The best of finite ``values`` for a column whose ``better`` direction `COLUMNS` gives.

    ``"nearer 0"``: the value of least magnitude (a sanity-check correlation: a negative
    rho is decorrelated, not better than 0).
    """
    if better == "higher":
        return max(values)
    if better == "lower":
        return min(values)
    return min(values, key=abs)


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Render method rows as a Markdown table; the best value of each column is in bold.

    A row with ``"models"`` (how many models its means are over) and ``"counts"`` (per column,
    how many of them have a value) marks a mean over fewer models: ``0.512 (1 of 2)``.

    Args:
        rows: Dicts with ``"method"`` and metric keys from `COLUMNS`.
        columns: Metric keys to show (default: every key of `COLUMNS` present in a row).
    """
    columns = [c for c in (columns or list(COLUMNS)) if any(c in row for row in rows)]
    header = "| method | " + " | ".join(f"{c} {ARROWS[COLUMNS[c][1]]}" for c in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    best = {}
    for column in columns:
        values = [float(r.get(column, math.nan)) for r in rows]
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            best[column] = best_value(finite, COLUMNS[column][1])
    for row in rows:
        cells = []
        for column in columns:
            value = float(row.get(column, math.nan))
            text = _format(value)
            text = f"**{text}**" if math.isfinite(value) and value == best.get(column) else text
            count, models = row.get("counts", {}).get(column), row.get("models")
            if count and models and count < models:  # the other models have no value
                text += f" ({count} of {models})"
            cells.append(text)
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plain_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Render method rows as a Markdown table of two significant digits, nothing in bold."""
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        cells = [f"{row[c]:.2g}" if math.isfinite(row[c]) else "–" for c in columns]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _method_styles(labels: list[str]) -> dict[str, tuple[Any, str]]:
    """Colour and line style of each method label, for plots with many variants.

    Colour by method, line style by feature source (``[oracle]`` solid, ``[superpixel]`` dashed,
    ``[selected]`` dotted): 28 variants stay apart with 14 colours.
    """
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab20")
    bases = list(dict.fromkeys(label.split(" [")[0] for label in labels))
    dashes = {"oracle": "-", "superpixel": "--", "selected": ":"}
    styles = {}
    for label in labels:
        base, _, source = label.partition(" [")
        styles[label] = (colours(bases.index(base) % 20), dashes.get(source.rstrip("]"), "-"))
    return styles


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
    # legible at a docs page's width (about 900 px): big type, the legend below both panels
    fig, axes = plt.subplots(1, 2, figsize=(11, 7.5), sharey=True)
    styles = _method_styles(list(merged))
    for label, curves in merged.items():
        colour, style = styles[label]
        for axis, kind in zip(axes, ("deletion", "insertion")):
            if curves.get(kind):
                mean = np.concatenate(curves[kind]).mean(axis=0)
                axis.plot(grid, mean, style, color=colour, label=label, lw=1.6)
    for axis, kind in zip(axes, ("deletion (MoRF)", "insertion (MoRF)")):
        axis.set_title(f"Pixel {kind}", fontsize=13)
        axis.set_xlabel("fraction of pixels", fontsize=11)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("target probability, mean over images and models", fontsize=11)
    if merged:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=10, frameon=False)
        rows = -(-len(labels) // 3)
        fig.tight_layout(rect=(0, min(0.6, 0.03 * rows + 0.01), 1, 1))
    else:
        fig.tight_layout()
    _save_figure(fig, path)


def _separate_labels(fig: Any, labels: list[Any], steps: int = 40) -> None:
    """Move point labels down or up in small steps until none overlaps another one.

    A moved label keeps a thin line to its point. Labels are placed from the top of the plot
    down, each taking the free position closest to its point.
    """
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()

    def text_box(label: Any) -> Any:  # the text alone, not the line to the point
        label.update_positions(renderer)
        return Text.get_window_extent(label, renderer)

    placed: list[Any] = []
    for label in sorted(labels, key=lambda text: -text.xy[1]):
        points = text_box(label).height * 0.9 * 72 / fig.dpi
        for step in range(steps):
            shift = (step + 1) // 2 * (-1 if step % 2 else 1) * points
            label.set_position((5, 3 + shift))
            if not any(text_box(label).overlaps(other) for other in placed):
                break
        placed.append(text_box(label))


def _plot_scatter(means: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(10, 7.5))
    styles = _method_styles([str(row["method"]) for row in means])
    labels = []
    for row in means:
        x, y = row.get("dist_kept", math.nan), row.get("dist_changed", math.nan)
        if math.isfinite(x) and math.isfinite(y):
            ours = str(row["method"]).startswith(("CTC", "IntegrativeCAM", "Explainer"))
            colour, _ = styles[str(row["method"])]
            axis.scatter(
                x, y, marker="*" if ours else "o", s=140 if ours else 50, color=colour, zorder=2
            )
            labels.append(
                axis.annotate(
                    row["method"],
                    (x, y),
                    fontsize=9,
                    xytext=(5, 3),
                    textcoords="offset points",
                    # drawn when _separate_labels moves the label away from its point
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.6", "shrinkB": 4},
                )
            )
    axis.set_xlabel("L2 distance when the prediction is kept (invariance: lower is better)")
    axis.set_ylabel("L2 distance when the prediction changes (sensitivity: higher is better)")
    axis.set_title("CTC protocol (fixed): invariance vs sensitivity, mean over models")
    axis.grid(alpha=0.3)
    fig.tight_layout()
    _separate_labels(fig, labels)  # after the layout: it moves the points on the canvas
    _save_figure(fig, path)


def markdown_tables(rows: list[dict[str, Any]]) -> str:
    """Render method rows as one Markdown table per group of `COLUMN_GROUPS`.

    Each table is headed by its group's title in italics (``*Localisation:*``); groups none of
    whose columns appear in a row are left out. The best value of each column is in bold, as in
    [`markdown_table`][ctc_plugin.harness.report.markdown_table].

    Args:
        rows: Dicts with ``"method"`` and metric keys from `COLUMNS`.
    """
    parts = []
    for title, columns in COLUMN_GROUPS.items():
        if any(column in row for row in rows for column in columns):
            parts.append(f"*{title}:*\n\n" + markdown_table(rows, list(columns)))
    return "\n\n".join(parts)


def write_report(
    runs: list[ModelRun],
    config: Any,
    out: Path,
    elapsed: float,
    machine: str,
    notes: list[str] | None = None,
    coverage: list[Coverage] | None = None,
    costs: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Write ``per_image.csv``, ``results.csv``, ``results.md`` and the two plots.

    Args:
        runs: One `ModelRun` per model and split (with the variants finished so far).
        config: The benchmark configuration (a dataclass or a mapping), recorded in the
            Markdown file.
        out: Output folder.
        elapsed: Compute seconds of the run.
        machine: One line describing the machine(s).
        notes: Extra lines for the "Failures" section (e.g. models that were skipped).
        coverage: What is finished per model. When a model is incomplete the report is
            labelled partial, its mean tables and plots cover the complete models only and every
            incomplete model gets a table of its own.
        costs: Rows with ``method``, ``models``, ``per_image`` and ``per_robustness_image``
            seconds and ``minutes`` per piece, for the "Cost of the run" section.

    Returns:
        The summary rows written to ``results.csv``.
    """
    settings = asdict(config) if is_dataclass(config) else dict(config)
    summary = [row | {"accuracy": run.accuracy} for run in runs for row in run.summary]
    _write_csv(out / "per_image.csv", [row for run in runs for row in run.rows])
    _write_csv(out / "results.csv", summary)
    complete = {(c.family, c.split) for c in coverage or [] if c.complete}
    partial = coverage is not None and not all(c.complete for c in coverage)
    whole = [run for run in runs if not partial or (run.family, run.split) in complete]
    whole_summary = [row | {"accuracy": run.accuracy} for run in whole for row in run.summary]
    means = _means(whole_summary)
    parts = [
        "# Benchmark results" + (" (partial)" if partial else ""),
        "",
        f"Machine: {machine}. Compute time: {elapsed / 60:.1f} min.",
        "",
        "Configuration: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".",
        "",
        *(_completeness(coverage, settings) if coverage is not None else []),
        "## Models",
        "",
        "| model | split | accuracy on the benchmark images |",
        "|---|---|---|",
        *[f"| {run.family} | {run.split} | {run.accuracy:.3f} |" for run in runs],
        "",
    ]
    scope = f"the {len(whole)} complete models" if partial else "all models and splits"
    if whole:
        parts += [f"## Mean over {scope}", "", MEAN_NOTE, "", markdown_tables(means), ""]
        errors_of_means = standard_errors([row for run in whole for row in run.rows])
        parts += [
            "### Standard errors of these means over the images",
            "",
            STANDARD_ERROR_NOTE,
            "",
            _plain_table(errors_of_means, PER_IMAGE_QUALITY),
            "",
        ]
        for split in dict.fromkeys(run.split for run in whole):
            rows = [row for row in whole_summary if row["split"] == split]
            parts += [f"## Split `{split}` (mean over families)", "", markdown_tables(_means(rows))]
            parts.append("")
    else:
        parts += ["## Mean over the complete models", "", "No model is complete yet.", ""]
    for run in runs:
        if partial and (run.family, run.split) not in complete and run.summary:
            parts += [
                f"## In progress: {run.family}/{run.split} (finished variants only)",
                "",
                markdown_tables(_means(run.summary)),
                "",
            ]
    if costs:
        parts += _cost_table(costs)
    parts += ["## Columns", ""]
    parts += [f"- `{key}`: {text} ({better} is better)" for key, (text, better) in COLUMNS.items()]
    errors = list(notes or []) + [line for run in runs for line in run.errors]
    parts += ["", "## Failures", ""] + ([f"- {line}" for line in errors] or ["None."])
    _write_text(out / "results.md", "\n".join(parts) + "\n")
    _plot_curves(whole or runs, out / "curves.png", int(settings.get("curve_steps", 20)))
    _plot_scatter(means, out / "invariance_sensitivity.png")
    return summary


def write_stored_report(
    store: BenchmarkStore | str | Path, skipped: Mapping[str, str] | None = None
) -> list[dict[str, object]]:
    """Write the report from the pieces stored so far; partial runs are labelled as such.

    Works while a run is still under way (in another process) and after it stopped: the
    configuration stored with the pieces is used. In a partial report the mean tables cover the
    complete models only, each model still in progress gets a table of its finished variants,
    and ``results.md`` lists what is finished; ``results.csv`` and ``per_image.csv`` hold every
    finished piece.

    Args:
        store: The run (or its output folder).
        skipped: ``{"family/split": reason}`` for models that could not be loaded (``None``:
            those the run's last start recorded).

    Returns:
        The summary rows written to ``results.csv``.

    Raises:
        FileNotFoundError: When the folder holds no run.
        ValueError: When no piece is finished yet, or a stored file does not parse.
    """
    if not isinstance(store, BenchmarkStore):
        store = BenchmarkStore.open(store)
    skipped = dict(store.skipped() if skipped is None else skipped)
    settings = store.config
    runs: list[ModelRun] = []
    coverage: list[Coverage] = []
    seconds = 0.0
    machines: dict[str, list[tuple[str, str, int]]] = defaultdict(list)  # machine -> pieces
    costs: dict[str, list[Piece]] = defaultdict(list)
    preparation: list[float] = []
    for family, split in run_order(settings["families"], settings["splits"]):
        name = f"{family}/{split}"
        info = store.model_info(family, split)
        if name in skipped or info is None:
            coverage.append(Coverage(family, split, 0, None, skipped.get(name)))
            continue
        run = ModelRun(family, split, info.accuracy, errors=list(info.notes))
        seconds += info.seconds
        preparation.append(info.seconds)
        finished = 0
        for label in info.planned:
            if not store.has(family, split, label):
                continue
            piece = store.load(family, split, label)
            finished += 1
            seconds += piece.seconds
            machines[piece.machine].append((name, label, len(info.planned)))
            if piece.error is not None:
                run.errors.append(piece.error)
                continue
            costs[label].append(piece)
            meta = {"family": family, "split": split, "method": label}
            run.rows += [meta | row for row in piece.rows]
            run.summary.append(piece.summary)
            run.curves[label] = piece.curves
        coverage.append(Coverage(family, split, finished, len(info.planned)))
        if finished:
            runs.append(run)
    if not runs:
        raise ValueError(_nothing_to_report(store))
    notes = [f"{name}: {reason}" for name, reason in skipped.items()]
    machine = _machines(machines)
    cost_rows = [_cost_row(label, pieces, settings) for label, pieces in costs.items()]
    prepared = float(np.mean(preparation))
    cost_rows.append(
        {
            "method": "(model preparation: data, superpixels, selected features)",
            "models": len(preparation),
            "per_image": prepared / int(settings["images"]),
            "per_robustness_image": math.nan,
            "minutes": prepared / 60,
        }
    )
    return write_report(runs, settings, store.root, seconds, machine, notes, coverage, cost_rows)


def _machines(pieces_by_machine: Mapping[str, list[tuple[str, str, int]]]) -> str:
    """The report's machine line: the one machine, or each machine with the pieces it measured.

    ``pieces_by_machine`` holds ``(model, method, methods planned for the model)`` of each
    piece. A run resumed on another machine or with another ``--threads`` measured its pieces'
    seconds and memory under other conditions; the line says so and which piece ran where, since
    the cost columns (and their bold best values) then compare across them. A model whose
    pieces all ran on one machine is named once (``resnet/shapes (all 9)``), its methods
    otherwise.
    """
    if len(pieces_by_machine) <= 1:
        return next(iter(pieces_by_machine), "")
    where = []
    for machine, pieces in pieces_by_machine.items():
        methods: dict[str, list[str]] = defaultdict(list)
        planned = {}
        for model, method, count in pieces:
            methods[model].append(method)
            planned[model] = count
        models = [
            f"{model} (all {len(labels)})"
            if len(labels) == planned[model] > 1
            else f"{model} {', '.join(labels)}"
            for model, labels in methods.items()
        ]
        where.append(f"{machine} ({counted(len(pieces), 'piece')}: {'; '.join(models)})")
    return (
        f"the pieces were measured on {len(pieces_by_machine)} machines or thread counts (a run "
        "resumed elsewhere or with another --threads), so their seconds and memory_mib compare "
        f"only within one of them: {'; '.join(where)}"
    )


def _nothing_to_report(store: BenchmarkStore) -> str:
    """Why a run has no piece to report: none planned (no method applies), or none finished."""
    models = store.plan()["models"]
    if models and not any(entry["planned"] for entry in models):
        names = ", ".join(f"{entry['family']}/{entry['split']}" for entry in models)
        return (
            f"none of the methods of the run under {store.root} applies to these models "
            f"({names}); start it with other --methods or --families"
        )
    return f"no benchmark piece is finished yet under {store.root}"


PER_IMAGE_STAGES = ("explain", "localisation", "curves")
#: What a cell of a mean table is (a mean of t statistics is no t statistic).
MEAN_NOTE = (
    "Each cell is the mean of the models' values; for `welch_t` that is the mean of the "
    "per-model t statistics, a ranking of the methods, not itself a t statistic (no p-value "
    "can be read from it). A cell marked (k of m) is the mean over the k of its m models that "
    "have a value (`dist_changed` has none where the protocol changed no prediction, "
    "`welch_t` where it changed or kept fewer than two)."
)


ROBUSTNESS_STAGES = ("protocol", "invariance", "sensitivity", "sanity")


def _cost_row(label: str, pieces: list[Piece], settings: Mapping[str, object]) -> dict[str, object]:
    """Where one variant's time went, mean over the models it finished on."""

    def mean(stages: Sequence[str]) -> float:
        return float(np.mean([sum(p.timings.get(s, 0.0) for s in stages) for p in pieces]))

    robust = int(settings.get("robustness_images", 0) or 0)
    return {
        "method": label,
        "models": len(pieces),
        "per_image": mean(PER_IMAGE_STAGES) / int(settings["images"]),
        "per_robustness_image": mean(ROBUSTNESS_STAGES) / robust if robust else math.nan,
        "minutes": float(np.mean([p.seconds for p in pieces])) / 60,
    }
