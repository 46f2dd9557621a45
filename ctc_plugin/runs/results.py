"""The results table of an ``explain-dataset`` run, and what it records of each image.

One row per image, target and method (`table_schema`); each shard's table records the content
sha256 of its images (`IMAGE_SHA256_KEY`), so that a resume can tell an image rewritten since
its shard was explained (`image_sha256`, `explained_contents`, `image_stat`).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ctc_plugin.resumable import RunStore
from ctc_plugin.runs.sources import ImageRef, Source
from ctc_plugin.wording import agreeing, caller_stacklevel, counted, first_names

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "IMAGE_SHA256_KEY",
    "TIMING_COLUMNS",
    "all_zero_rows",
    "all_zero_rows_of",
    "explained_contents",
    "image_sha256",
    "image_stat",
    "run_shards",
    "table_schema",
]


#: Columns that hold wall-clock times: everything else repeats bit for bit.
TIMING_COLUMNS = ("seconds", "segment_seconds")

#: Key of a shard table's metadata: JSON ``{image name: content sha256}`` of a folder's images.
IMAGE_SHA256_KEY = "image_sha256"

#: The name of a run's shard: ``shard-`` and its number in the plan, five digits at least.
SHARD_NAME = re.compile(r"shard-(\d{5,})")


def run_shards(store: RunStore, warn: bool = True) -> list[str]:
    """The finished shards of the ``explain-dataset`` run in ``store``, in plan order.

    Only the run's own shards count: ``shard-NNNNN`` (`SHARD_NAME`) numbered within its plan
    (below its manifest's shard count, where the manifest can be read). Any other ``.parquet``
    file in its shards folder (a user's copy of a shard, another tool's file) is no shard: it
    is left out, and ``warn`` names it in a warning, so that its rows are never read as the
    run's.
    """
    try:
        planned: int | None = int(store.manifest()["shards"])
    except (OSError, ValueError, KeyError, TypeError):  # no run, or no readable manifest
        planned = None
    ours, others = [], []
    for name in store.finished():
        match = SHARD_NAME.fullmatch(name)
        number = int(match[1]) if match else -1
        own = match is not None and name == f"shard-{number:05d}"  # not shard-000001
        (ours if own and (planned is None or number < planned) else others).append(name)
    if others and warn:
        files = [f"{name}.parquet" for name in others]
        warnings.warn(
            f"{store.shards} holds {counted(len(others), 'file')} that "
            f"{agreeing(len(others), 'is no shard', 'are no shards')} of this run "
            f"({first_names(files)}): left out of its results; move "
            f"{agreeing(len(others), 'it', 'them')} out of that folder",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )
    return ours


def table_schema() -> pa.Schema:
    """The Parquet schema of a run's table (one row per image, target and method).

    Columns: ``image`` (index in the plan), ``name`` (path relative to the folder, or
    ``shapes-<i>``), ``label`` (class index from the source, null when unknown), ``shard``,
    ``target_spec`` (``predicted``, ``label``, or the index/name given), ``target`` (the class
    explained), ``predicted`` (the model's class), ``method``, ``title``, ``per_segment``
    (scores are the method's own segment scores, not means of a per-pixel map), ``segments``
    (``K``), ``feature_ids`` (``0..K-1``, the ids of the shard's ``feature_mask``), ``scores``
    (one per feature id), ``seconds`` (the method's time) and ``segment_seconds`` (the image's
    segmentation time, shared by its rows). Each shard's file also holds, in its metadata under
    `IMAGE_SHA256_KEY`, the content sha256 of the folder images it explained.
    """
    import pyarrow as pa

    return pa.schema(
        [
            ("image", pa.int64()),
            ("name", pa.string()),
            ("label", pa.int64()),
            ("shard", pa.int64()),
            ("target_spec", pa.string()),
            ("target", pa.int64()),
            ("predicted", pa.int64()),
            ("method", pa.string()),
            ("title", pa.string()),
            ("per_segment", pa.bool_()),
            ("segments", pa.int64()),
            ("feature_ids", pa.list_(pa.int64())),
            ("scores", pa.list_(pa.float64())),
            ("seconds", pa.float64()),
            ("segment_seconds", pa.float64()),
        ]
    )


def all_zero_rows(store: RunStore, method: str) -> dict[str, int]:
    """``{image name: segments}`` of the images whose rows of ``method`` scored every segment 0.

    In the run's order (the first image first): ``method``'s part of `all_zero_rows_of`. A NaN
    score is no 0.

    Raises:
        ValueError: If a finished shard's table does not parse (naming the file to delete).
    """
    return all_zero_rows_of(store, [method])[method]


def all_zero_rows_of(store: RunStore, methods: Sequence[str]) -> dict[str, dict[str, int]]:
    """``{method: {image name: segments}}``: the images whose rows scored every segment 0.

    Each method's images are in the run's order (the first image first). Read in one pass,
    shard by shard (the run's own, `run_shards`), only the rows of ``methods`` and the columns
    ``name``, ``method``, ``scores`` and ``segments``
    ([`RunStore.iter_tables`][ctc_plugin.resumable.store.RunStore.iter_tables]); the scores are
    compared with 0 in Arrow, so only the all-zero rows' names and segment counts become Python
    objects, not the run's table. A NaN score is no 0.

    Raises:
        ValueError: If a finished shard's table does not parse (naming the file to delete).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    zero: dict[str, dict[str, int]] = {method: {} for method in methods}
    if not zero:
        return zero
    columns, rows = ["name", "method", "scores", "segments"], [("method", "in", list(zero))]
    for table in store.iter_tables(columns, filters=rows, names=run_shards(store, warn=False)):
        if not table.num_rows:
            continue
        scores = table.column("scores").combine_chunks()
        nonzero = pc.not_equal(pc.list_flatten(scores), 0.0)
        scored = pc.filter(pc.list_parent_indices(scores), nonzero)  # rows with a score not 0
        all_zero = pc.invert(pc.is_in(pa.array(range(table.num_rows)), value_set=scored))
        kept = table.filter(all_zero).select(["name", "method", "segments"]).to_pydict()
        for name, method, segments in zip(
            kept["name"], kept["method"], kept["segments"], strict=True
        ):
            zero[method][name] = segments
    return zero


def _image_file(source: Source, ref: ImageRef) -> Path | None:
    """The file of image ``ref``; ``None`` for a generated image (the shapes sources)."""
    path = source.read(ref) if source.kind == "folder" else None
    return path if isinstance(path, Path) else None


def image_sha256(source: Source, ref: ImageRef) -> str | None:
    """An image file's content sha256 now; ``None`` for a generated image or a missing file."""
    from ctc_plugin.weights import content_sha256

    path = _image_file(source, ref)
    if path is None:
        return None
    try:
        return content_sha256(path)
    except OSError:  # gone or unreadable: reading it for the run says so
        return None


def explained_contents(store: RunStore, shard: str) -> dict[str, str]:
    """The content sha256 of each image of the finished ``shard`` when it was explained.

    Read from its table's metadata (``image_sha256``); empty for a shard of a version that did
    not record them, or a table that does not parse.
    """
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(store.table_path(shard)).metadata or {}
        contents = json.loads(metadata.get(IMAGE_SHA256_KEY.encode(), b"{}"))
    except (OSError, ValueError):
        return {}
    return contents if isinstance(contents, dict) else {}


#: What `image_stat` gives where it knows nothing (a generated image, a missing file).
NO_STAT: tuple[None, None, None, None] = (None, None, None, None)


def image_stat(source: Source, ref: ImageRef) -> tuple[int | None, ...]:
    """An image file's ``(size, mtime_ns, ctime_ns, inode)``: what tells it was rewritten.

    The change time and the inode too: a picture copied over another with ``cp -p`` or
    ``rsync -a`` keeps the size (fixed for BMPs of one size) and the modification time of the
    one it replaced, but writing it sets the change time, which no user can set back.
    `NO_STAT` unless a file.
    """
    path = _image_file(source, ref)
    if path is None:
        return NO_STAT
    try:
        stat = path.stat()
    except OSError:  # gone: the image list says so
        return NO_STAT
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino
