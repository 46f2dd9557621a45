"""A run's output folder: its manifest and its finished shards, each written atomically.

    DIR/manifest.json            the job's kind and configuration (compared when resuming)
    DIR/plan.json                what the job planned (rewritten on every start; optional)
    DIR/shards/<shard>.npz       the shard's arrays (written first)
    DIR/shards/<shard>.parquet   its table (written last)
    DIR/shards/.claim-<shard>    empty; locked by the process computing the shard (see claim)

Shards are named ``shard-00000`` by ``explain-dataset`` (one row per image, method and target)
and after the piece by the benchmark (one row per image); the benchmark writes its report
files next to these.

Every file is written under a temporary name in the same folder and then renamed with
``os.replace``, so a file with its final name is always complete. A shard counts as finished
when its Parquet file exists (its ``.npz`` is renamed into place before it); a run killed at any
moment leaves whole shards, maybe a lone ``.npz`` of an unfinished one (rewritten when that shard
runs again) and maybe ``.tmp-*`` files, which the next run removes once their writer is gone
(see [`remove_stale_temporaries`][ctc_plugin.resumable.atomic.remove_stale_temporaries]): a
second process opening the folder, or a report written while the run goes on, never removes
the temporary file of a writer still running. Processes that write shards hold the folder
shared while they write one, and a start holds it exclusively while it checks and writes the
manifest ([`folder_lock`][ctc_plugin.resumable.atomic.folder_lock]), so a start never replaces
a run in the middle of a shard.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctc_plugin.resumable.atomic import (
    ConfigMismatchError,
    claim,
    folder_lock,
    is_stale_temporary,
    remove_stale_temporaries,
    write_atomic,
)
from ctc_plugin.wording import counted, first_names

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

__all__ = ["RunStore", "json_values", "read_json"]


_FORMAT = 2
MANIFEST = "manifest.json"
PLAN = "plan.json"
_DIGITS = re.compile(r"(\d+)")


class RunStore:
    """The output folder of one run.

    Args:
        root: The folder (created when missing).

    Raises:
        ValueError: If ``root`` is a file.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"--out {self.root} is a file; give a folder for the run's results")
        self.shards = self.root / "shards"
        self._opened: dict[str, Any] | None = None  # the manifest this store's run writes under

    # ------------------------------------------------------------------ manifest
    def open(
        self,
        manifest: dict[str, Any],
        plan: dict[str, Any] | None = None,
        adopt: bool = False,
        restart_unfinished: bool = False,
    ) -> None:
        """Start or resume: write ``manifest`` in a new folder, or check it against the stored one.

        Leftover temporary files of killed writers are removed (those of writers still
        running, in another process too, are kept), and ``plan`` (when given) is
        written to ``plan.json``, replacing the last start's. With ``restart_unfinished``, a
        run of the same job with another manifest that finished no shard yet (a start that
        failed on a wrong option, say) holds nothing to keep: its files are removed and
        ``manifest`` starts afresh, unless the folder holds other files too. A run still under
        way in another process then finds the manifest changed when it writes its first shard,
        and stops
        ([`write_shard`][ctc_plugin.resumable.store.RunStore.write_shard]); a shard it is
        writing when this start comes is finished first (this start waits for it) and then
        counts as finished, so the start is refused. Temporary files of a start killed while
        it wrote the manifest are removed too.

        Args:
            manifest: ``{"job": kind, "config": {...}, ...}``: what a resumed run must share
                (compared as JSON gives it back, see
                [`json_values`][ctc_plugin.resumable.store.json_values]).
            plan: What the job planned, for readers of the folder (never compared).
            adopt: Start a run in a folder that holds other files (a job converting its own
                older layout); otherwise such a folder is refused.
            restart_unfinished: Let a run of the same job that finished no shard give way to
                ``manifest`` instead of refusing it
                ([`run_job`][ctc_plugin.resumable.job.run_job] does).

        Raises:
            ConfigMismatchError: If the folder holds another run's manifest.
            ValueError: If the folder holds files but no manifest (not a run folder), another
                kind of job's run, or a run written by another version of this package.
        """
        path = self.root / MANIFEST
        manifest = {"format": _FORMAT, **json_values(manifest)}
        self.root.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.root, exclusive=True):  # no shard is written meanwhile
            remove_stale_temporaries(self.root)  # a start killed while writing its manifest
            if restart_unfinished and self._gives_way(manifest):
                self._clear()  # a start that finished no shard (a typo in an option): start afresh
            if path.exists():
                self._check_stored(manifest)
            else:
                if not adopt and not all(map(_system_entry, self.root.iterdir())):
                    raise ValueError(
                        f"--out {self.root} is a folder with other files and no {MANIFEST}; "
                        "give an empty or new folder for the run's results"
                    )
                text = json.dumps(manifest, indent=1) + "\n"
                write_atomic(path, lambda stream: stream.write(text.encode()))
            self._opened = manifest
            self.shards.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.shards)
            with contextlib.suppress(OSError):  # claims this user may not lock: kept
                self._claims_held()  # removes those a killed process left
        if plan is not None:
            text = json.dumps(plan, indent=1) + "\n"
            write_atomic(self.root / PLAN, lambda stream: stream.write(text.encode()))

    def check_start(self, manifest: dict[str, Any], restart_unfinished: bool = False) -> None:
        """Refuse, writing nothing, a start that the folder's other run would refuse.

        [`open`][ctc_plugin.resumable.store.RunStore.open] refuses it the same way. A job
        checks this before its own slow checks (loading a model, say), so that a folder of
        another run is refused first, naming each difference, and a start refused by its own
        checks leaves no file behind. A folder of other files is left to ``open``, which
        refuses it writing nothing.

        Raises:
            ConfigMismatchError: If the folder holds another run's manifest (of the same job).
            ValueError: If it holds another kind of job's run, or one of another version.
        """
        manifest = {"format": _FORMAT, **json_values(manifest)}
        if not (self.root / MANIFEST).exists():
            return
        if restart_unfinished and self._gives_way(manifest):
            return
        self._check_stored(manifest)

    def _gives_way(self, manifest: dict[str, Any]) -> bool:
        """Whether the folder's run gives way to ``manifest`` (``restart_unfinished``).

        It does when it is a run of the same job with another manifest that finished no shard
        and is not computing one now: a process that holds a shard's claim (see `claim`) is in
        the middle of its first shard, whose work a start of other options must not discard.
        """
        return (
            (self.root / MANIFEST).exists()
            and not self._holds(manifest)  # the same run: its claims stay (see claim)
            and self._nothing_finished(manifest.get("job"))
            and not self._claims_held()  # a process holding a claim computes that shard
        )

    def _claims_held(self) -> bool:
        """Whether a process holds one of the shards' claims; remove every claim nobody holds.

        A process killed while it held a claim leaves its file (after its shard was written,
        no later claim would take it); the system let go of its lock, so it is removed here.
        """
        held_elsewhere = False
        for path in sorted(self.shards.glob(".claim-*")):
            with claim(path, wait=False, remove=True) as held:
                held_elsewhere = held_elsewhere or not held
        return held_elsewhere

    def _check_stored(self, manifest: dict[str, Any]) -> None:
        """Refuse ``manifest`` unless the stored one is the same job's with no difference.

        Raises:
            ConfigMismatchError: Naming each difference.
            ValueError: For another kind of job's run, or one of another version.
        """
        stored = self.manifest()
        if stored.get("job") != manifest.get("job"):
            raise ValueError(
                f"{self.root} holds a run of {stored.get('job')}, not of "
                f"{manifest.get('job')}; choose another --out"
            )
        differences = _differences(stored, manifest)
        if differences:
            raise ConfigMismatchError(self.root, differences)

    def _holds(self, manifest: dict[str, Any]) -> bool:
        """Whether the folder's manifest is ``manifest`` (a start of the same run)."""
        try:
            return read_json(self.root / MANIFEST) == manifest
        except ValueError:
            return False

    def _nothing_finished(self, job: Any) -> bool:
        """Whether the folder holds only the files of a run of ``job`` that finished no shard."""
        ours = {MANIFEST, PLAN, self.shards.name}
        others = (entry for entry in self.root.iterdir() if entry.name not in ours)
        if self.finished() or not all(map(_system_entry, others)):
            return False
        if self.shards.is_dir() and any(map(_live_temporary, self.shards.iterdir())):
            return False  # a writer that takes no lock is under way: its run stays
        try:
            return read_json(self.root / MANIFEST).get("job") == job
        except ValueError:
            return False

    def _clear(self) -> None:
        """Remove the files of a run that finished no shard (a lone ``.npz`` at most)."""
        if self.shards.is_dir():
            for leftover in self.shards.iterdir():
                if leftover.is_file() and not _live_temporary(leftover):
                    leftover.unlink()
            if not any(self.shards.iterdir()):
                self.shards.rmdir()
        (self.root / PLAN).unlink(missing_ok=True)
        (self.root / MANIFEST).unlink()

    def manifest(self) -> dict[str, Any]:
        """The stored manifest.

        Raises:
            FileNotFoundError: If the folder holds no run.
            ValueError: If the manifest does not parse, or was written by another version of
                this package.
        """
        path = self.root / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{self.root} holds no run ({MANIFEST} is missing)")
        stored = read_json(path)
        if stored.get("format") != _FORMAT:
            raise ValueError(
                f"{path} was written by another version of ctc-plugin (format "
                f"{stored.get('format')!r}, this one writes {_FORMAT}); use a fresh --out"
            )
        return stored

    def plan(self) -> dict[str, Any] | None:
        """The plan the last start wrote, or ``None`` (a job that writes none, or no start yet).

        Raises:
            ValueError: If ``plan.json`` does not parse.
        """
        path = self.root / PLAN
        return read_json(path) if path.exists() else None

    # ------------------------------------------------------------------ shards
    def table_path(self, name: str) -> Path:
        """The Parquet file of shard ``name``."""
        return self.shards / f"{name}.parquet"

    def arrays_path(self, name: str) -> Path:
        """The ``.npz`` file of shard ``name``."""
        return self.shards / f"{name}.npz"

    def is_finished(self, name: str) -> bool:
        """Whether shard ``name`` is complete (its Parquet file, written last, exists)."""
        return self.table_path(name).exists()

    @contextmanager
    def claim(self, name: str, wait: bool) -> Iterator[bool]:
        """Claim shard ``name`` for this process within the block: yields whether it is held.

        Two processes that run the same shards claim each shard before computing it, so that
        they share the work instead of both doing all of it: ``wait=False`` gives ``False`` at
        once while another process computes the shard, ``wait=True`` waits until it is done
        (or its process died). Once the claim is held, check
        [`is_finished`][ctc_plugin.resumable.store.RunStore.is_finished]. The claim is the lock
        of ``shards/.claim-<name>`` (see [`claim`][ctc_plugin.resumable.atomic.claim]), removed
        by its holder when the block ends, the shard finished or not (an interrupted run
        leaves none behind; the next start removes those of a killed one).
        """
        self.shards.mkdir(parents=True, exist_ok=True)
        with claim(self.shards / f".claim-{name}", wait, remove=True) as held:
            yield held

    def write_shard(self, name: str, table: pa.Table, arrays: dict[str, np.ndarray]) -> None:
        """Write one finished shard: the arrays first, the table last, each atomically.

        Raises:
            ConfigMismatchError: If this store was opened with a manifest and the folder's
                manifest is another one now (a run of other options replaced it, see
                [`open`][ctc_plugin.resumable.store.RunStore.open]): nothing is written.
        """
        import numpy as np
        import pyarrow.parquet as pq

        self.shards.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.root, exclusive=False):  # open() of another start waits
            if self._opened is not None:
                stored = self.manifest() if (self.root / MANIFEST).exists() else {}
                differences = _differences(stored, self._opened)
                if differences:
                    raise ConfigMismatchError(self.root, differences)
            write_atomic(
                self.arrays_path(name), lambda stream: np.savez_compressed(stream, **arrays)
            )
            write_atomic(self.table_path(name), lambda stream: pq.write_table(table, stream))

    def finished(self) -> list[str]:
        """Names of the finished shards, sorted with their numbers compared as numbers.

        ``shard-100000`` (a plan of more than 100 000 shards) comes after ``shard-99999``, so
        [`read_table`][ctc_plugin.resumable.store.RunStore.read_table] keeps the plan's order.
        """
        if not self.shards.exists():
            return []
        names = (
            path.stem for path in self.shards.glob("*.parquet") if not path.name.startswith(".")
        )
        return sorted(names, key=_numbers_as_numbers)

    def read_table(self, names: list[str] | None = None) -> pa.Table:
        """Every finished shard's rows, in shard order, as one ``pyarrow.Table``.

        ``names``: only these finished shards, in this order (``None``: every one, see
        [`finished`][ctc_plugin.resumable.store.RunStore.finished]).

        Raises:
            FileNotFoundError: If no shard is finished yet.
            ValueError: If a shard's table does not parse (the message says which file to
                delete so that the next run computes the shard again).
        """
        import pyarrow as pa

        tables = list(self.iter_tables(names=names))
        if not tables:
            if not self.root.is_dir():
                raise FileNotFoundError(f"{self.root}: no such run folder (give a run's --out)")
            raise FileNotFoundError(f"{self.root} holds no finished shard yet")
        return pa.concat_tables(tables)

    def iter_tables(
        self,
        columns: list[str] | None = None,
        filters: Any = None,
        names: list[str] | None = None,
    ) -> Iterator[pa.Table]:
        """Each finished shard's rows, in shard order, one ``pyarrow.Table`` at a time.

        Only ``columns`` are read (``None``: every column), and only the rows ``filters``
        keeps (``pyarrow.parquet.read_table``'s, ``[("method", "==", "lime")]``; it may name
        columns left out of ``columns``): a pass over a large run holds one shard's part at a
        time, not the whole table. ``names``: only these finished shards, in this order
        (``None``: every one; a job that knows its shards' names gives them, so that another
        ``.parquet`` file put in the shards folder is not read as a shard).

        Raises:
            ValueError: If a shard's table does not parse (the message says which file to
                delete so that the next run computes the shard again).
        """
        import pyarrow.parquet as pq

        for name in self.finished() if names is None else names:
            read = functools.partial(pq.read_table, columns=columns, filters=filters)
            yield self._read(name, read, self.table_path(name))

    def read_arrays(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of shard ``name`` (read with ``allow_pickle=False``).

        Raises:
            ValueError: If the file does not parse (the message says which file to delete so
                that the next run computes the shard again).
        """
        import numpy as np

        def load(path: Path) -> dict[str, np.ndarray]:
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}

        return self._read(name, load, self.arrays_path(name))

    def read_shard(self, name: str) -> tuple[pa.Table, dict[str, np.ndarray]]:
        """The table and the arrays of the finished shard ``name``.

        Raises:
            ValueError: If one of its files does not parse (the message says which file to
                delete so that the next run computes the shard again).
        """
        import pyarrow.parquet as pq

        return self._read(name, pq.read_table, self.table_path(name)), self.read_arrays(name)

    def check_readable(self, names: list[str]) -> None:
        """Refuse finished shards whose files cannot be read, checking only their ends (cheap).

        A resumed run that says it is done must be readable: each shard's ``.parquet`` footer
        (its schema and row groups) is read and its ``.npz``'s list of arrays (the zip's
        central directory, at its end), not the data. A file deleted, emptied or cut short
        (a bad copy, a full disk elsewhere) is found; a byte changed inside the data is found
        only when it is read
        ([`read_shard`][ctc_plugin.resumable.store.RunStore.read_shard]).

        Args:
            names: Finished shards.

        Raises:
            ValueError: Naming each shard that cannot be read, its file and why, and the
                ``.parquet`` files to delete so that the next run computes them again (for one
                shard, the message of
                [`read_shard`][ctc_plugin.resumable.store.RunStore.read_shard]).
        """
        import pyarrow.parquet as pq

        def npz_listing(path: Path) -> None:
            with zipfile.ZipFile(path):
                pass

        damaged = []
        for name in names:
            for read, path in ((pq.read_metadata, self.table_path(name)),
                               (npz_listing, self.arrays_path(name))):  # fmt: skip
                try:
                    read(path)
                except _READ_ERRORS as error:
                    damaged.append((name, path, error))
                    break
        if len(damaged) == 1:
            raise ValueError(self._unreadable(*damaged[0]))
        if damaged:
            shards = [f"{name} ({path.name}: {_why(error)})" for name, path, error in damaged]
            tables = [str(self.table_path(name)) for name, _, _ in damaged]
            others = [name for name, _, _ in damaged[3:]]
            raise ValueError(
                f"cannot read {counted(len(damaged), 'finished shard')} of {self.root}: "
                f"{first_names(shards)}; delete {first_names(tables)} to compute them again"
                + (f" (the others: {', '.join(others)}, each its .parquet)" if others else "")
            )

    def _unreadable(self, name: str, path: Path, error: BaseException) -> str:
        """The message for the file ``path`` of shard ``name`` that ``error`` stopped reading."""
        return (
            f"cannot read the shard {name} of {self.root}: {path.name}: {_why(error)}; delete "
            f"{self.table_path(name)} to compute it again"
        )

    def _read(self, name: str, read: Any, path: Path) -> Any:
        """``read(path)``, a file of shard ``name``, with one clear error for a damaged file."""
        if not self.is_finished(name):
            finished = self.finished()
            raise ValueError(
                f"{self.root} has no finished shard {name} (its finished shards: "
                f"{first_names(finished) or 'none yet'}); run the command again to compute the "
                "shards left"
            )
        try:
            return read(path)
        except _READ_ERRORS as error:
            raise ValueError(self._unreadable(name, path, error)) from error


#: What reading a damaged or missing shard file raises (pyarrow's, numpy's and zipfile's errors).
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def _why(error: BaseException) -> str:
    """Why a shard file could not be read: ``error``, or that the file is missing."""
    if isinstance(error, FileNotFoundError):
        return "the file is missing"
    return str(error).strip().rstrip(".")  # pyarrow's end in a full stop; the message goes on


def json_values(value: Any) -> Any:
    """``value`` as it reads back from JSON: dataclasses become dicts, tuples lists.

    Manifests are compared in this form, so a configuration given with tuples equals the one
    stored in ``manifest.json``.

    Examples:
        >>> json_values({"methods": ("ctc", "gradcam"), "seed": 1})
        {'methods': ['ctc', 'gradcam'], 'seed': 1}
    """
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    return json.loads(json.dumps(value))


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        ValueError: If the file cannot be read, does not parse or holds no JSON object (the
            message names the file).
    """
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path} (damaged, or not a run folder): {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a JSON object (damaged, or not a run folder)")
    return value


def _numbers_as_numbers(name: str) -> list[Any]:
    """A sort key of ``name`` that compares its runs of digits by value (``9`` before ``10``).

    The pieces alternate text and digits (``re.split`` with a group), so two keys always
    compare text with text and numbers with numbers.
    """
    return [int(piece) if i % 2 else piece for i, piece in enumerate(_DIGITS.split(name))]


#: Files a system or its file browser puts in folders (besides hidden ones: `_system_entry`).
_SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})


def _system_entry(path: Path) -> bool:
    """Whether ``path`` is no one's results: hidden (``.DS_Store``, ``.Trashes``) or the system's.

    A new folder holding only such entries is empty to a run, which leaves them as they are
    (a file browser that showed the folder, a drive's own folders at its top). The temporary
    files of a writer (``.tmp-*``) are not: a run does not start beside a writer under way.

    Examples:
        >>> [_system_entry(Path(name)) for name in (".DS_Store", "Thumbs.db", ".tmp-x", "a.txt")]
        [True, True, False, False]
    """
    name = path.name
    hidden = name.startswith(".") and not name.startswith(".tmp-")
    return hidden or name.lower() in _SYSTEM_FILES


def _live_temporary(path: Path) -> bool:
    """Whether ``path`` is the temporary file of a writer still running."""
    return path.name.startswith(".tmp-") and not is_stale_temporary(path)


def _differences(
    stored: dict[str, Any], requested: dict[str, Any], prefix: str = ""
) -> list[tuple[str, Any, Any]]:
    """What differs between two manifests, key by key, each value in full.

    Options under ``config`` are named alone (``lime_samples``), keys of other nested objects
    with their path (``source.spec``); lists and plain values are compared whole.
    """
    differences = []
    for key in sorted(set(stored) | set(requested)):
        old, new = stored.get(key), requested.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            inner = "" if not prefix and key == "config" else f"{prefix}{key}."
            differences.extend(_differences(old, new, inner))
        elif old != new:
            differences.append((f"{prefix}{key}", old, new))
    return differences
