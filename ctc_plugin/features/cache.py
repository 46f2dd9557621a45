"""On-disk cache of segmentations, keyed by image content, segmenter settings and versions.

Segment Anything takes seconds to minutes per image on a CPU, and explaining the same image twice
(another target class, another bias-sharing mode, a perturbation study reusing the masks) should
not run it again. The cache is a [diskcache](https://grantjenks.com/docs/diskcache/) folder: an
SQLite index ``cache.db`` (with its ``-wal``/``-shm`` companions) and one file per entry in
two-level hexadecimal subfolders (``ab/cd/<28 hex digits>.val``). Each entry holds the label map
and its [`FeatureTable`][ctc_plugin.features.base.FeatureTable] as ``.npz`` bytes, read back with
``allow_pickle=False``; nothing in the folder is ever unpickled.

Behaviour:

- **Only its own entries.** Eviction and [`clear`][ctc_plugin.features.cache.MaskCache.clear]
  remove only files the index lists, and only names of the entry pattern above; other files in
  the folder (your own ``.npz`` files, notes, subfolders) are never read, changed or removed. A
  cache folder holds a marker file, ``ctc-plugin-mask-cache.txt``, written before its index: a
  folder whose ``cache.db`` is not a diskcache index, or is another program's diskcache index (no
  marker, and entries that are not masks), is refused rather than written to, so that neither
  eviction nor ``clear`` can remove that program's entries. A mask cache of an earlier version
  (no marker, every entry a mask) gets its marker and is used; one without marker and without
  entries is refused with a message that says to delete its ``cache.db``, and so is a folder
  with the marker whose ``cache.db`` is damaged (truncated, overwritten, not an index).
- **Size cap.** The folder (index plus entries) is kept under ``max_bytes`` by removing the least
  recently used entries; the index itself takes a few tens of KiB.
- **Shared use.** Several threads and processes may use one folder at the same time; an entry
  that another process evicts while it is being read is a miss.
- **Damaged entries.** An entry that cannot be decoded (empty, truncated, not an ``.npz``, wrong
  arrays, a folder in place of its file) is a miss with a
  [`CorruptCacheEntryWarning`][ctc_plugin.features.cache.CorruptCacheEntryWarning] naming it; it
  is removed, and a segmenter recomputes and stores it again.
- **Unusable folder.** A cache path that is a file, a folder that cannot be created or written,
  or a foreign ``cache.db`` raise one
  [`MaskCacheError`][ctc_plugin.features.cache.MaskCacheError] naming the path and what to do.

The default folder is ``masks`` in the package's cache root: ``$CTC_PLUGIN_CACHE/masks`` when
that is set, else ``$XDG_CACHE_HOME/ctc-plugin/masks``, else ``~/.cache/ctc-plugin/masks``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import sqlite3
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import diskcache
import numpy as np

from ctc_plugin.wording import caller_stacklevel

if TYPE_CHECKING:  # pragma: no cover
    from ctc_plugin.features.base import FeatureTable

__all__ = [
    "CorruptCacheEntryWarning",
    "MaskCache",
    "MaskCacheError",
    "default_cache_dir",
    "image_digest",
    "resolve_cache",
]

_FORMAT_VERSION = 1
_INDEX_NAME = diskcache.core.DBNAME
#: Tables and settings a diskcache index holds; a ``cache.db`` with anything else is not ours.
_INDEX_TABLES = frozenset({"Settings", "Cache"})
_INDEX_SETTINGS = frozenset(diskcache.core.DEFAULT_SETTINGS) | frozenset(diskcache.core.METADATA)
#: The file names diskcache's ``Disk.filename`` gives entries (relative to the folder).
_ENTRY_FILE = re.compile(r"[0-9a-f]{2}[/\\][0-9a-f]{2}[/\\][0-9a-f]{28}\.val")
#: The file that makes a folder a mask cache; written before the index, never removed.
_MARKER_NAME = "ctc-plugin-mask-cache.txt"
_MARKER_TEXT = (
    "This folder is a ctc-plugin mask cache (segmentations keyed by image and segmenter "
    "settings).\nEmpty it with ctc_plugin.features.MaskCache(<this folder>).clear(); files of "
    "your own here are never touched.\n"
)
#: The keys ``MaskCache.key_for`` gives: 40 hexadecimal digits, a dash, the settings key.
_ENTRY_KEY = re.compile(r"[0-9a-f]{40}-.+", re.DOTALL)
#: Seconds a process waits for another one's write lock before the folder counts as unusable.
_LOCK_TIMEOUT = 60.0


class MaskCacheError(OSError):
    """The cache folder cannot be used; the message names the path and what to do."""


class CorruptCacheEntryWarning(UserWarning):
    """A cache entry could not be decoded; it was removed and counts as a miss."""


class _CorruptEntry(Exception):
    """Raised inside the disk layer for an entry that is not raw bytes in an entry file."""


def default_cache_dir() -> Path:
    """Return the default cache folder: ``masks`` in the package's cache root.

    See [`cache_root`][ctc_plugin.files.cache_root] for the order of lookup.
    """
    from ctc_plugin.files import cache_root

    return cache_root() / "masks"


def image_digest(image: np.ndarray) -> str:
    """Return a SHA-256 hex digest of an image's shape, dtype and pixel bytes."""
    array = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{array.shape}|{array.dtype.str}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _own_file(filename: object) -> bool:
    return isinstance(filename, str) and _ENTRY_FILE.fullmatch(filename) is not None


def _mask_entry(key: object, raw: object, mode: object, filename: object) -> bool:
    """Whether a row of a diskcache index is a mask entry (as ``MaskCache.store`` writes them)."""
    return (
        isinstance(key, str)
        and raw == 1
        and _ENTRY_KEY.fullmatch(key) is not None
        and mode == diskcache.core.MODE_BINARY
        and _own_file(filename)
    )


class _EntryDisk(diskcache.Disk):
    """diskcache's file layer restricted to ``str`` keys and ``bytes`` values.

    It never unpickles (an index from an untrusted folder cannot make it run code), reads only
    entry files of diskcache's own naming pattern and removes nothing else.
    """

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"mask cache keys are str, got {type(key).__name__}")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise _CorruptEntry("its key is pickled")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple:
        if type(value) is not bytes:
            raise TypeError(f"mask cache values are bytes, got {type(value).__name__}")
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_RAW and isinstance(value, bytes):
            return bytes(value)
        if mode != diskcache.core.MODE_BINARY or read or not _own_file(filename):
            raise _CorruptEntry(f"it is not stored as bytes in an entry file (mode {mode})")
        try:
            return super().fetch(mode, filename, value, read)
        except FileNotFoundError:
            raise  # evicted by another process since the lookup: diskcache reports a miss
        except OSError as error:
            raise _CorruptEntry(f"its file {filename} cannot be read ({error})") from error

    def remove(self, file_path: Any) -> None:
        if not _own_file(file_path):
            return
        full_path = os.path.join(self._directory, file_path)
        with contextlib.suppress(OSError):  # another process may have removed it already
            if os.path.isfile(full_path) and not os.path.islink(full_path):
                os.remove(full_path)
        # the two hexadecimal levels go when empty (rmdir refuses non-empty folders)
        inner = os.path.dirname(full_path)
        for folder in (inner, os.path.dirname(inner)):
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def _encode(labels: np.ndarray, table: FeatureTable) -> bytes:
    dtype = np.int16 if labels.max(initial=0) < np.iinfo(np.int16).max else np.int32
    arrays = dict(table.to_arrays())
    arrays["labels"] = np.asarray(labels).astype(dtype)
    arrays["format_version"] = np.asarray(_FORMAT_VERSION)
    stream = io.BytesIO()
    np.savez_compressed(stream, **arrays)
    return stream.getvalue()


#: Held while NumPy reads an archive's array headers. NumPy parses each header with
#: ``ast.literal_eval``, and CPython 3.11 can raise a spurious ``SystemError`` ("AST ...
#: recursion depth mismatch", python/cpython#106905) when threads parse at once; a load would
#: then report a sound entry as damaged and remove it.
_ARCHIVE_LOCK = threading.Lock()


def _decode(data: bytes, shape: tuple[int, ...]) -> tuple[np.ndarray, FeatureTable] | None:
    """Decode an entry; ``None`` for another format version. Raises on anything malformed."""
    from ctc_plugin.features.base import FeatureTable

    with _ARCHIVE_LOCK, np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    if int(arrays.pop("format_version")) != _FORMAT_VERSION:
        return None
    labels = arrays.pop("labels")
    table = FeatureTable.from_arrays(arrays)
    count = len(table)
    if labels.shape != tuple(shape) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label map of shape {labels.shape} ({labels.dtype}), expected {shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= count):
        raise ValueError(f"label ids outside 0..{count - 1}")
    if labels.size and not np.bincount(labels.ravel(), minlength=count).all():
        raise ValueError(f"label ids are not 0..{count - 1}, each on some pixel")
    lengths = {len(table.bbox), len(table.source), *(len(s) for s in table.scores.values())}
    if lengths - {count}:
        raise ValueError("feature table columns of different lengths")
    return labels.astype(np.int64), table


class MaskCache:
    """A folder of segmentations with a size cap, safe to share between threads and processes.

    The folder is created and its index opened on first use; constructing a ``MaskCache``
    writes nothing. See the module docstring for what the folder holds and how damaged entries
    and unusable folders are handled.

    Args:
        directory: The cache folder. Default:
            [`default_cache_dir`][ctc_plugin.features.cache.default_cache_dir].
        max_bytes: Size cap of the folder (index plus entries); the least recently used entries
            are removed when a new entry would exceed it. Default 512 MiB.

    Attributes:
        hits: Loads answered from the cache (by this object).
        misses: Loads that found nothing usable (by this object).

    Raises:
        ValueError: If ``max_bytes`` is not positive.
        MaskCacheError: If ``directory`` exists and is not a folder.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, max_bytes: int = 512 << 20):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.directory = Path(directory).expanduser() if directory else default_cache_dir()
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._index: diskcache.Cache | None = None
        self._check_not_a_file()

    def __repr__(self) -> str:
        return f"MaskCache(directory={str(self.directory)!r}, max_bytes={self.max_bytes})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_index"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def key_for(self, image: np.ndarray, settings_key: str) -> str:
        """Return the entry key of an image under a segmenter's settings key."""
        return f"{image_digest(image)[:40]}-{settings_key}"

    def load(self, image: np.ndarray, settings_key: str) -> tuple[np.ndarray, FeatureTable] | None:
        """Return the cached ``(label_map, table)`` or ``None`` on a miss.

        A damaged entry is a miss: it is removed and a
        [`CorruptCacheEntryWarning`][ctc_plugin.features.cache.CorruptCacheEntryWarning] names
        it. An entry of another format version is a silent miss (the next store replaces it).

        Raises:
            MaskCacheError: If the folder cannot be used (the message names it).
        """
        index = self._open(create=False)
        key = self.key_for(image, settings_key)
        data = None
        if index is not None:
            try:
                data = index.get(key)
            except _CorruptEntry as error:
                self._discard(index, key, str(error))
            except (diskcache.Timeout, sqlite3.Error, OSError) as error:
                raise self._unusable(error) from error
        result = None
        if data is not None:
            try:
                result = _decode(data, image.shape[:2])
            except Exception as error:  # anything a malformed archive raises: a damaged entry
                self._discard(index, key, f"{type(error).__name__}: {error}")
        with self._lock:
            if result is None:
                self.misses += 1
            else:
                self.hits += 1
        return result

    def store(
        self, image: np.ndarray, settings_key: str, labels: np.ndarray, table: FeatureTable
    ) -> str:
        """Write an entry (replacing one under the same key), then enforce the size cap.

        Readers in other threads and processes see either the old entry, the new one or none.
        With a cap smaller than the index and the entry, the entry is evicted at once.

        Returns:
            The entry key.

        Raises:
            MaskCacheError: If the folder cannot be used (the message names it).
        """
        data = _encode(labels, table)
        index = self._open(create=True)
        key = self.key_for(image, settings_key)
        try:
            index.set(key, data)
            if index.volume() > self.max_bytes:
                index.cull()
        except (diskcache.Timeout, sqlite3.Error, OSError) as error:
            raise self._unusable(error) from error
        return key

    def size_bytes(self) -> int:
        """Return the size of the cache on disk (index plus entries); 0 before first use.

        Raises:
            MaskCacheError: The folder cannot be read (what to pass instead is in the message).
        """
        index = self._open(create=False)
        if index is None:
            return 0
        try:
            return int(index.volume())
        except (diskcache.Timeout, sqlite3.Error, OSError) as error:
            raise self._unusable(error) from error

    def clear(self) -> None:
        """Remove every entry of this cache; other files and the folder itself stay.

        Raises:
            MaskCacheError: The folder cannot be read or an entry cannot be removed.
        """
        index = self._open(create=False)
        if index is None:
            return
        try:
            index.clear()
        except (diskcache.Timeout, sqlite3.Error, OSError) as error:
            raise self._unusable(error) from error

    def close(self) -> None:
        """Close this thread's connection to the index (it reopens on next use)."""
        if self._index is not None:
            self._index.close()

    # -- internals ---------------------------------------------------------------------------

    def _unusable(self, error: BaseException, what: str | None = None) -> MaskCacheError:
        reason = what or f"it could not be used ({type(error).__name__}: {error})"
        return MaskCacheError(
            f"mask cache folder {self.directory}: {reason}. Pass a folder you can write to as "
            "cache= (or set CTC_PLUGIN_CACHE), or cache=None to work without a cache"
        )

    def _check_not_a_file(self) -> None:
        if self.directory.exists() and not self.directory.is_dir():
            raise self._unusable(
                FileExistsError(), "the path exists and is not a folder (is it a file?)"
            )

    def _open(self, create: bool) -> diskcache.Cache | None:
        """Return the open index; ``None`` when ``create`` is false and the folder is absent."""
        if self._index is not None:
            return self._index
        with self._lock:
            if self._index is not None:
                return self._index
            self._check_not_a_file()
            if not self.directory.exists():
                if not create:
                    return None
                try:
                    self.directory.mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    raise self._unusable(error, f"it cannot be created ({error})") from error
            if not os.access(self.directory, os.W_OK | os.X_OK):
                raise self._unusable(PermissionError(), "the folder is not writable")
            self._check_index()
            self._mark()
            try:
                self._index = diskcache.Cache(
                    str(self.directory),
                    timeout=_LOCK_TIMEOUT,
                    disk=_EntryDisk,
                    size_limit=self.max_bytes,
                    eviction_policy="least-recently-used",
                    cull_limit=1,
                    disk_min_file_size=0,
                    statistics=0,
                    tag_index=0,
                    **{
                        name: value
                        for name, value in diskcache.core.DEFAULT_SETTINGS.items()
                        if name.startswith("sqlite_")
                    },
                )
            except (diskcache.Timeout, sqlite3.Error, OSError) as error:
                raise self._unusable(error) from error
            return self._index

    def _check_index(self) -> None:
        """Refuse a ``cache.db`` that is not a mask-cache index (it is never written to).

        An index is a mask cache's when the folder has the marker file, or, for a cache of an
        earlier version (which wrote no marker), when it has entries and every one of them is a
        mask entry (a key of ``key_for``'s form stored in an entry file).
        """
        path = self.directory / _INDEX_NAME
        if not path.exists():
            return
        marked = self._marked()
        foreign = (
            (
                f"its {_INDEX_NAME} is not a mask cache index, though the folder's "
                f"{_MARKER_NAME} shows it is a mask cache: the index is damaged and is left "
                f"alone; delete {path} and the cache starts afresh (its masks are computed "
                "again when next asked for), or choose another folder"
            )
            if marked
            else (
                f"its {_INDEX_NAME} is not a mask cache index, and is left alone; choose "
                "another folder for the cache"
            )
        )
        if not path.is_file():
            raise self._unusable(IsADirectoryError(), foreign)
        try:
            uri = f"file:{quote(str(path.resolve()))}?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=_LOCK_TIMEOUT)) as db:
                tables = {
                    row[0]
                    for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                settings = (
                    {row[0] for row in db.execute("SELECT key FROM Settings")}
                    if "Settings" in tables
                    else set()
                )
                entries = (
                    db.execute("SELECT key, raw, mode, filename FROM Cache").fetchall()
                    if "Cache" in tables and not marked
                    else []
                )
        except sqlite3.DatabaseError as error:
            if isinstance(error, sqlite3.OperationalError) and "not a database" not in str(error):
                raise self._unusable(error) from error
            if _is_sqlite_file(path):  # a database, damaged (a crash or a full disk mid-write)
                raise self._unusable(
                    error,
                    f"its {_INDEX_NAME} is a damaged SQLite database ({error}); if this folder "
                    f"is a mask cache, delete {path} and the cache starts afresh (its masks are "
                    "computed again when next asked for), or choose another folder",
                ) from error
            raise self._unusable(error, foreign) from error
        if tables - _INDEX_TABLES or settings - _INDEX_SETTINGS:
            raise self._unusable(ValueError(), foreign)
        if marked:
            return
        strangers = [entry for entry in entries if not _mask_entry(*entry)]
        if strangers:
            raise self._unusable(
                ValueError(),
                f"its {_INDEX_NAME} is another program's diskcache index (no {_MARKER_NAME}, and "
                f"entries such as {strangers[0][0]!r} that are not masks), and is left alone; "
                "choose another folder for the cache",
            )
        if not entries:
            raise self._unusable(
                ValueError(),
                f"its {_INDEX_NAME} holds no entries and the folder has no mask cache marker "
                f"{_MARKER_NAME}: if it is an empty mask cache of an earlier "
                f"ctc-plugin, delete {path} (it holds no masks); otherwise choose another folder "
                "for the cache",
            )

    def _marked(self) -> bool:
        return (self.directory / _MARKER_NAME).is_file()

    def _mark(self) -> None:
        """Write the marker file unless it is there (before the index is created)."""
        if self._marked():
            return
        try:
            (self.directory / _MARKER_NAME).write_text(_MARKER_TEXT)
        except OSError as error:
            raise self._unusable(error, f"its marker file cannot be written ({error})") from error

    def _discard(self, index: diskcache.Cache | None, key: str, reason: str) -> None:
        warnings.warn(
            f"mask cache entry {key!r} in {self.directory} is damaged ({reason}); it was "
            "removed and counts as a miss (a segmenter recomputes and stores it again)",
            CorruptCacheEntryWarning,
            stacklevel=caller_stacklevel(),
        )
        if index is not None:
            with contextlib.suppress(diskcache.Timeout, sqlite3.Error, OSError, _CorruptEntry):
                index.delete(key)


def _is_sqlite_file(path: Path) -> bool:
    """Whether ``path`` starts with SQLite's file header (damaged or not)."""
    try:
        with path.open("rb") as stream:
            return stream.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def resolve_cache(cache: MaskCache | str | os.PathLike[str] | bool | None) -> MaskCache | None:
    """Turn a segmenter's ``cache=`` argument into a ``MaskCache`` or ``None``.

    ``None``/``False``: no cache; ``True``: the default folder; a path: that folder; a
    ``MaskCache``: itself.
    """
    if cache is None or cache is False:
        return None
    if cache is True:
        return MaskCache()
    if isinstance(cache, MaskCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return MaskCache(cache)
    raise TypeError(
        f"cache must be None, a bool, a folder path or a MaskCache, got {type(cache).__name__}"
    )
