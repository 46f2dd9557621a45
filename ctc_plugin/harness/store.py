"""The benchmark's finished pieces on disk, so that a run can stop and resume.

A *piece* is one method variant (e.g. ``"CTC-reference [superpixel]"``) on one model (family and
split): its per-image rows, its mean deletion/insertion curves' data, its summary row with the
robustness metrics, or the error it raised. Everything is plain data, never pickle:

    DIR/config.json                           the run's configuration
    DIR/pieces/<family>--<split>/model.json   accuracy, planned variants, notes
    DIR/pieces/<family>--<split>/<variant>/   one finished piece:
        piece.json   summary row, error, seconds, machine
        rows.csv     one row per image
        curves.npz   "deletion" and "insertion" curves, (N, steps + 1)

A piece folder is first written under a temporary name and then renamed, so a folder with the
final name is always complete: a run killed at any moment leaves only whole pieces (and maybe a
``.tmp-*`` folder, ignored and removed by the next run). Names are URL-quoted labels.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ctc_plugin.resumable import ConfigMismatchError, write_atomic

__all__ = ["ConfigMismatchError", "Piece", "ModelInfo", "RunStore", "run_order"]


_FORMAT = 1


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


@dataclass
class ModelInfo:
    """What is known about a model once its run has started.

    Attributes:
        accuracy: Accuracy on the benchmark images.
        planned: Variant labels the run will compute for this model, in report order.
        notes: Lines for the report's "Failures" section (e.g. a missing Explainer).
        seconds: Wall-clock seconds of the model's preparation (data, features), last start.
    """

    accuracy: float
    planned: list[str]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_order(families: Iterable[str], splits: Iterable[str]) -> list[tuple[str, str]]:
    """Models in run and report order: split by split, family by family.

    A run finishes every variant of one model before it starts the next, so a partial run has
    whole models to report.
    """
    return [(family, split) for split in splits for family in families]


def _plain(config: Any) -> dict[str, Any]:
    """The configuration as JSON values (tuples become lists), for storing and comparing."""
    values = asdict(config) if is_dataclass(config) else dict(config)
    return json.loads(json.dumps(values))


def _name(text: str) -> str:
    return quote(text, safe="")


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Write JSON atomically (a reader in another process never sees half a file)."""
    text = (json.dumps(value, indent=2) + "\n").encode()
    write_atomic(path, lambda stream: stream.write(text))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(
            f"cannot read {path} (damaged or not written by the benchmark): {error}"
        ) from error
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a JSON object (damaged or not written by the benchmark)")
    return value


def _stored_config(path: Path) -> dict[str, Any]:
    document = _read_json(path)
    if document.get("format") != _FORMAT or not isinstance(document.get("config"), dict):
        raise ValueError(
            f"{path} was not written by this version of the benchmark (format "
            f"{document.get('format')!r}, expected {_FORMAT}); use a fresh --out"
        )
    return document["config"]


class RunStore:
    """The finished pieces of one benchmark run under one output folder.

    Args:
        root: The output folder (``--out``).
        config: The run's configuration (a dataclass or a mapping of JSON values).

    Raises:
        ConfigMismatchError: when ``root`` already holds a run with another configuration.
    """

    def __init__(self, root: str | Path, config: Any) -> None:
        self.root = Path(root)
        self.config = _plain(config)
        path = self.root / "config.json"
        if path.is_file():
            stored = _stored_config(path)
            keys = list(dict.fromkeys([*stored, *self.config]))
            differences = [
                (key, stored.get(key), self.config.get(key))
                for key in keys
                if stored.get(key) != self.config.get(key)
            ]
            if differences:
                raise ConfigMismatchError(self.root, differences, kind="benchmark run")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            _write_json(path, {"format": _FORMAT, "config": self.config})

    @classmethod
    def open(cls, root: str | Path) -> RunStore:
        """Open an existing run with the configuration stored in it.

        Raises:
            FileNotFoundError: when ``root`` holds no ``config.json``.
        """
        path = Path(root) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{root} holds no benchmark run (no config.json); start one with "
                f"`ctc-plugin benchmark --out {root}`"
            )
        return cls(root, _stored_config(path))

    def _model_dir(self, family: str, split: str) -> Path:
        return self.root / "pieces" / f"{_name(family)}--{_name(split)}"

    def _piece_dir(self, family: str, split: str, label: str) -> Path:
        return self._model_dir(family, split) / _name(label)

    def has(self, family: str, split: str, label: str) -> bool:
        """True when the piece is finished (computed or failed) and stored."""
        return (self._piece_dir(family, split, label) / "piece.json").is_file()

    def start_model(self, family: str, split: str, info: ModelInfo) -> None:
        """Record a model's accuracy, planned variants and notes (replacing earlier ones)."""
        folder = self._model_dir(family, split)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".tmp-*"):  # left by a run that was killed mid-write
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        _write_json(folder / "model.json", asdict(info))

    def model_info(self, family: str, split: str) -> ModelInfo | None:
        """The model's record, or ``None`` when its run never started."""
        path = self._model_dir(family, split) / "model.json"
        if not path.is_file():
            return None
        value = _read_json(path)
        try:
            return ModelInfo(**value)
        except TypeError as error:
            raise ValueError(f"{path} is not a model record: {error}") from error

    def save(self, piece: Piece) -> None:
        """Write a finished piece: first under a temporary name, then renamed into place."""
        folder = self._model_dir(piece.family, piece.split)
        folder.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
        try:
            meta = {
                "label": piece.label,
                "summary": piece.summary,
                "error": piece.error,
                "seconds": piece.seconds,
                "machine": piece.machine,
                "timings": piece.timings,
            }
            (temporary / "piece.json").write_text(
                json.dumps(meta, indent=2) + "\n"
            )  # in a temp dir
            keys = list(piece.rows[0]) if piece.rows else ["image"]
            with (temporary / "rows.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=keys)
                writer.writeheader()
                writer.writerows(piece.rows)  # repr of a float reads back exactly
            np.savez(temporary / "curves.npz", **piece.curves)
            temporary.rename(self._piece_dir(piece.family, piece.split, piece.label))
        finally:
            if temporary.exists():
                shutil.rmtree(temporary, ignore_errors=True)

    def load(self, family: str, split: str, label: str) -> Piece:
        """Read a finished piece back.

        Raises:
            ValueError: when one of its files does not parse (delete the folder to recompute).
        """
        folder = self._piece_dir(family, split, label)
        meta = _read_json(folder / "piece.json")
        if meta.get("label") != label:
            raise ValueError(f"{folder} holds {meta.get('label')!r}, not {label!r}")
        try:
            with (folder / "rows.csv").open(newline="") as handle:
                rows = [
                    {key: int(v) if key == "image" else float(v) for key, v in row.items()}
                    for row in csv.DictReader(handle)
                ]
            with np.load(folder / "curves.npz", allow_pickle=False) as data:
                curves = {key: data[key] for key in data.files}
        except (OSError, ValueError) as error:
            raise ValueError(
                f"cannot read the piece {folder}: {error}; delete the folder to recompute it"
            ) from error
        return Piece(
            family,
            split,
            label,
            rows=rows,
            summary={k: math.nan if v is None else v for k, v in meta["summary"].items()},
            curves=curves,
            error=meta.get("error"),
            seconds=float(meta.get("seconds", 0.0)),
            machine=str(meta.get("machine", "")),
            timings={str(k): float(v) for k, v in meta.get("timings", {}).items()},
        )
