"""The benchmark's finished pieces, as shards of a resumable run folder.

A *piece* is one method variant (e.g. ``"CTC-reference [superpixel]"``) on one model (family and
split): its per-image rows, its deletion/insertion curves, its summary row with the robustness
metrics, or the error it raised. The benchmark is a job of the resumable engine
([`BenchmarkJob`][ctc_plugin.harness.benchmark.BenchmarkJob]), one shard per piece, so its run
folder is a [`RunStore`][ctc_plugin.resumable.store.RunStore] like ``explain-dataset``'s:

    DIR/manifest.json                          the job ("benchmark") and its configuration
    DIR/plan.json                              per model: planned variants and notes; skipped
                                               models (rewritten on every start)
    DIR/shards/<family>--<split>--<variant>.parquet
                                               one row per image (``image`` and the per-image
                                               metrics); the piece's summary, error, timings,
                                               machine and model accuracy in the table's
                                               metadata (``piece``, JSON)
    DIR/shards/<family>--<split>--<variant>.npz
                                               ``deletion`` and ``insertion`` curves, (N, steps + 1)

Names are URL-quoted. Every file is written atomically, so a run killed at any moment leaves
only whole pieces. This module is the view that reads and writes pieces in that folder
([`BenchmarkStore`][ctc_plugin.harness.store.BenchmarkStore]); it stores nothing on its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from ctc_plugin import resumable
from ctc_plugin.resumable import ConfigMismatchError as ConfigMismatchError  # its old home
from ctc_plugin.resumable import json_values, read_json

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "JOB",
    "BenchmarkStore",
    "ModelInfo",
    "Piece",
    "convert_legacy_run",
    "piece_from_shard",
    "piece_name",
    "piece_shard",
    "run_order",
]


def __getattr__(name: str) -> Any:
    """Refuse the benchmark store's old name, ``RunStore``, with its new one.

    The engine's run store is also called ``RunStore``; this module does not hand it out under
    the old name, so code written for the benchmark's store fails at once instead of getting
    another class.

    It raises ImportError, not AttributeError, for ``RunStore``: ``from ... import RunStore``
    turns an AttributeError into Python's bare "cannot import name", which would drop the
    message naming the new class. The price: ``hasattr(store, "RunStore")`` and
    ``getattr(store, "RunStore", default)`` raise this ImportError instead of answering
    ``False`` or the default.

    Raises:
        ImportError: For ``RunStore`` (also ``from ctc_plugin.harness.store import RunStore``),
            naming ``BenchmarkStore``.
        AttributeError: For any other missing name.
    """
    if name == "RunStore":
        raise ImportError(
            "ctc_plugin.harness.store.RunStore, the benchmark's store, is now "
            "ctc_plugin.harness.store.BenchmarkStore (see docs/renames.md); the engine's run "
            "folder is ctc_plugin.resumable.RunStore, another class",
            name=__name__,
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The job's name in the run folder's manifest.
JOB = "benchmark"
_META = b"piece"


@dataclass
class Piece:
    """One finished method variant on one model.

    Attributes:
        family: Zoo family (or the caller's model name).
        split: Data split.
        label: Variant label, e.g. ``"CTC-reference [superpixel]"``.
        rows: Per-image rows (``"image"`` and the per-image metric columns).
        summary: Summary row (means and robustness metrics); empty when the variant failed.
        curves: ``{"deletion"|"insertion": (N, steps + 1)}`` pixel MoRF curves.
        error: One line naming the error the variant raised, or ``None``.
        seconds: Wall-clock seconds the piece took (explanations, metrics and robustness).
        machine: One line describing the machine that computed it.
        timings: Seconds per stage (e.g. ``"explain"``, ``"curves"``, ``"protocol"``).
        accuracy: The model's accuracy on the benchmark images.
        preparation: Wall-clock seconds of the model's preparation (data, features) in the
            process that computed the piece.
    """

    family: str
    split: str
    label: str
    rows: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    machine: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    accuracy: float = math.nan
    preparation: float = 0.0


@dataclass
class ModelInfo:
    """What is known about a model of a run.

    Attributes:
        accuracy: Accuracy on the benchmark images (from its finished pieces; NaN before).
        planned: Variant labels the run computes for this model, in report order.
        notes: Lines for the report's "Failures" section (e.g. a missing Explainer).
        seconds: Wall-clock seconds of the model's preparation (data, features).
    """

    accuracy: float
    planned: list[str]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_order(families: Iterable[str], splits: Iterable[str]) -> list[tuple[str, str]]:
    """Models in run and report order: split by split, family by family.

    The plan lists every variant of one model before the next model, so an embedded run that
    stops has whole models to report.
    """
    return [(family, split) for split in splits for family in families]


def piece_name(family: str, split: str, label: str) -> str:
    """The file stem of a piece: ``<family>--<split>--<label>``, each URL-quoted."""
    return "--".join(quote(text, safe="") for text in (family, split, label))


def piece_shard(piece: Piece) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """A piece as a shard: its per-image table (the rest in its metadata) and its curves."""
    import pyarrow as pa

    if piece.rows:
        table = pa.Table.from_pylist(piece.rows)
    else:
        table = pa.table({"image": pa.array([], pa.int64())})
    meta = {
        "family": piece.family,
        "split": piece.split,
        "label": piece.label,
        "summary": piece.summary,
        "error": piece.error,
        "seconds": piece.seconds,
        "machine": piece.machine,
        "timings": piece.timings,
        "accuracy": piece.accuracy,
        "preparation": piece.preparation,
    }
    table = table.replace_schema_metadata({_META: json.dumps(meta).encode()})
    return table, dict(piece.curves)


def piece_from_shard(table: pa.Table, arrays: dict[str, np.ndarray]) -> Piece:
    """The piece a shard holds.

    The inverse of [`piece_shard`][ctc_plugin.harness.store.piece_shard].

    Raises:
        ValueError: If the table carries no piece metadata.
    """
    metadata = table.schema.metadata or {}
    if _META not in metadata:
        raise ValueError("the shard is not a benchmark piece (its table has no piece metadata)")
    meta = json.loads(metadata[_META])
    rows = [
        {key: int(value) if key == "image" else float(value) for key, value in row.items()}
        for row in table.to_pylist()
    ]
    return Piece(
        meta["family"],
        meta["split"],
        meta["label"],
        rows=rows,
        summary={k: math.nan if v is None else v for k, v in meta["summary"].items()},
        curves=dict(arrays),
        error=meta.get("error"),
        seconds=float(meta.get("seconds", 0.0)),
        machine=str(meta.get("machine", "")),
        timings={str(k): float(v) for k, v in meta.get("timings", {}).items()},
        accuracy=float(meta.get("accuracy", math.nan)),
        preparation=float(meta.get("preparation", 0.0)),
    )


class BenchmarkStore:
    """The pieces of one benchmark run, read from and written to its run folder.

    Args:
        root: The output folder (``--out``).
        config: The run's configuration (a dataclass or a mapping of JSON values).
        restart_unfinished: Let a benchmark run in ``root`` that finished no piece (a start
            whose methods applied to no model, say) give way to ``config`` (see
            [`RunStore.open`][ctc_plugin.resumable.store.RunStore.open]).
        start: Start or resume the run in ``root`` (``False``: read it as it is, see
            [`open`][ctc_plugin.harness.store.BenchmarkStore.open]).

    Raises:
        ctc_plugin.resumable.ConfigMismatchError: When ``root`` already holds a run with another
            configuration.
        ValueError: When ``root`` holds another kind of run, files but no run, or a manifest
            that does not parse.
    """

    def __init__(
        self, root: str | Path, config: Any, restart_unfinished: bool = False, *, start: bool = True
    ) -> None:
        self.runs = resumable.RunStore(root)
        self.root = self.runs.root
        self.config = json_values(config)
        convert_legacy_run(self.root)
        if start:  # otherwise for reading only (see open)
            self.runs.open(
                {"job": JOB, "config": self.config}, restart_unfinished=restart_unfinished
            )

    @classmethod
    def open(cls, root: str | Path) -> BenchmarkStore:
        """Open an existing run with the configuration stored in it, for reading.

        Nothing in the folder is written or removed (a run may be under way in another
        process: its temporary files stay), so the store returned is for reading and
        reporting; [`save`][ctc_plugin.harness.store.BenchmarkStore.save] belongs to the
        store a run opens with its configuration.

        Raises:
            FileNotFoundError: When ``root`` holds no run.
            ValueError: When it holds another kind of run, or a damaged manifest.
        """
        convert_legacy_run(Path(root))
        try:
            manifest = resumable.RunStore(root).manifest()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{root} holds no benchmark run (no manifest.json); start one with "
                f"`ctc-plugin benchmark --out {root}`"
            ) from None
        if manifest.get("job") != JOB or not isinstance(manifest.get("config"), dict):
            raise ValueError(
                f"{root} holds a run of {manifest.get('job')}, not a benchmark run; give the "
                "--out of a benchmark run"
            )
        return cls(root, manifest["config"], start=False)

    def has(self, family: str, split: str, label: str) -> bool:
        """True when the piece is finished (computed or failed) and stored."""
        return self.runs.is_finished(piece_name(family, split, label))

    def save(self, piece: Piece) -> None:
        """Write a finished piece (atomically, as every shard)."""
        name = piece_name(piece.family, piece.split, piece.label)
        self.runs.write_shard(name, *piece_shard(piece))

    def load(self, family: str, split: str, label: str) -> Piece:
        """Read a finished piece back.

        Raises:
            ValueError: When one of its files does not parse (the message names the file to
                delete so that the next run computes the piece again).
        """
        name = piece_name(family, split, label)
        piece = piece_from_shard(*self.runs.read_shard(name))
        if (piece.family, piece.split, piece.label) != (family, split, label):
            raise ValueError(
                f"{self.runs.table_path(name)} holds {piece.label!r} of {piece.family}/"
                f"{piece.split}, not {label!r} of {family}/{split}"
            )
        return piece

    def plan(self) -> dict[str, Any]:
        """The last start's plan: ``{"models": [...], "skipped": {...}}`` (empty before)."""
        return self.runs.plan() or {"models": [], "skipped": {}}

    def skipped(self) -> dict[str, str]:
        """``{"family/split": reason}`` for the models the last start could not load."""
        return dict(self.plan().get("skipped", {}))

    def model_info(self, family: str, split: str) -> ModelInfo | None:
        """The model's planned variants and notes, and its first finished piece's numbers.

        Accuracy and preparation seconds come from that piece; ``None`` when no finished piece
        of the model is stored yet.
        """
        entry = next(
            (m for m in self.plan()["models"] if (m["family"], m["split"]) == (family, split)),
            None,
        )
        if entry is None:
            return None
        for label in entry["planned"]:
            if self.has(family, split, label):
                first = self.load(family, split, label)
                return ModelInfo(
                    first.accuracy, list(entry["planned"]), list(entry["notes"]), first.preparation
                )
        return None


_LEGACY_CONFIG = "config.json"
_LEGACY_PIECES = "pieces"


def convert_legacy_run(root: Path) -> bool:
    """Rewrite a run of the benchmark's earlier own store as a run folder of the engine.

    Before the benchmark ran on the resumable engine it kept ``config.json`` and
    ``pieces/<family>--<split>/`` (``model.json``; per variant ``piece.json``, ``rows.csv``,
    ``curves.npz``). Such a folder (without a ``manifest.json``) gets a manifest, a plan and one
    shard per finished piece, with exactly its numbers; the old files are left as they were.

    Returns:
        Whether the folder was converted (``False``: nothing of the old layout, or converted
        before).

    Raises:
        ValueError: If an old file does not parse.
    """
    import csv
    import sys

    legacy, pieces = root / _LEGACY_CONFIG, root / _LEGACY_PIECES
    runs = resumable.RunStore(root)
    if not legacy.is_file() or not pieces.is_dir() or (root / "manifest.json").exists():
        return False
    document = read_json(legacy)
    config = document.get("config")
    if document.get("format") != 1 or not isinstance(config, dict):
        raise ValueError(f"{legacy} is not a benchmark configuration; use a fresh --out")
    models = []
    converted = []
    for family, split in run_order(config["families"], config["splits"]):
        folder = pieces / f"{quote(family, safe='')}--{quote(split, safe='')}"
        if not (folder / "model.json").is_file():
            continue
        info = read_json(folder / "model.json")
        models.append(
            {"family": family, "split": split, "planned": info["planned"], "notes": info["notes"]}
        )
        for label in info["planned"]:
            where = folder / quote(label, safe="")
            if not (where / "piece.json").is_file():
                continue
            meta = read_json(where / "piece.json")
            try:
                with (where / "rows.csv").open(newline="") as handle:
                    rows = [
                        {k: int(v) if k == "image" else float(v) for k, v in row.items()}
                        for row in csv.DictReader(handle)
                    ]
                with np.load(where / "curves.npz", allow_pickle=False) as data:
                    curves = {key: data[key] for key in data.files}
            except (OSError, ValueError) as error:
                raise ValueError(f"cannot read the piece {where}: {error}") from error
            summary = {k: math.nan if v is None else v for k, v in meta["summary"].items()}
            converted.append(
                Piece(
                    family,
                    split,
                    label,
                    rows,
                    summary,
                    curves,
                    meta.get("error"),
                    float(meta.get("seconds", 0.0)),
                    str(meta.get("machine", "")),
                    {str(k): float(v) for k, v in meta.get("timings", {}).items()},
                    float(info["accuracy"]),
                    float(info.get("seconds", 0.0)),
                )
            )
    for piece in converted:  # the manifest last: a conversion stopped half way starts again
        name = piece_name(piece.family, piece.split, piece.label)
        runs.write_shard(name, *piece_shard(piece))
    runs.open({"job": JOB, "config": config}, plan={"models": models, "skipped": {}}, adopt=True)
    print(
        f"{root}: converted {len(converted)} pieces of the earlier benchmark layout "
        f"({_LEGACY_CONFIG}, {_LEGACY_PIECES}/) to the run folder of the engine (manifest.json, "
        f"shards/); the old files are kept and no longer read",
        file=sys.stderr,
    )
    return True
