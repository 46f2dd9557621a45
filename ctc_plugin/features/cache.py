"""On-disk cache of segmentations, keyed by image content and segmenter settings.

Segment Anything takes seconds to minutes per image on a CPU, and explaining the same image twice
(another target class, another bias-sharing mode, a perturbation study reusing the masks) should
not run it again. Each entry is one ``.npz`` file (read with ``allow_pickle=False``) holding the
label map and its [`FeatureTable`][ctc_plugin.features.base.FeatureTable]. The folder is kept
under a size cap by removing the least recently used entries.

The default folder is ``$CTC_PLUGIN_CACHE`` when set, else ``$XDG_CACHE_HOME/ctc-plugin/masks``,
else ``~/.cache/ctc-plugin/masks``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ctc_plugin.features.base import FeatureTable

__all__ = ["MaskCache", "default_cache_dir", "image_digest", "resolve_cache"]

_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """Return the default cache folder (see the module docstring for the order of lookup)."""
    explicit = os.environ.get("CTC_PLUGIN_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "ctc-plugin" / "masks"


def image_digest(image: np.ndarray) -> str:
    """Return a SHA-256 hex digest of an image's shape, dtype and pixel bytes."""
    array = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{array.shape}|{array.dtype.str}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


class MaskCache:
    """A folder of ``.npz`` segmentations with a size cap.

    Args:
        directory: Where the entries live (created on first write). Default:
            [`default_cache_dir`][ctc_plugin.features.cache.default_cache_dir].
        max_bytes: Size cap of the folder; the least recently used entries are removed when a new
            entry would exceed it. Default 512 MiB.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, max_bytes: int = 512 << 20):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.directory = Path(directory).expanduser() if directory else default_cache_dir()
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"MaskCache(directory={str(self.directory)!r}, max_bytes={self.max_bytes})"

    def path_for(self, image: np.ndarray, settings_key: str) -> Path:
        """Return the entry path for an image under a segmenter's settings key."""
        return self.directory / f"{image_digest(image)[:40]}-{settings_key}.npz"

    def load(self, image: np.ndarray, settings_key: str) -> tuple[np.ndarray, FeatureTable] | None:
        """Return the cached ``(label_map, table)`` or ``None`` on a miss.

        Raises:
            ValueError: If the entry exists but is not a cache file this version wrote (the
                message names the file to delete).
        """
        from ctc_plugin.features.base import FeatureTable

        path = self.path_for(image, settings_key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            version = int(arrays.pop("format_version"))
            labels = arrays.pop("labels")
            table = FeatureTable.from_arrays(arrays)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise ValueError(
                f"mask cache entry {path} is not readable ({error}); delete it or the cache folder"
            ) from error
        if version != _FORMAT_VERSION or labels.shape != image.shape[:2]:
            self.misses += 1
            return None
        os.utime(path)  # mark as recently used
        self.hits += 1
        return labels.astype(np.int64), table

    def store(
        self, image: np.ndarray, settings_key: str, labels: np.ndarray, table: FeatureTable
    ) -> Path:
        """Write an entry atomically, then enforce the size cap. Returns the entry path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_for(image, settings_key)
        dtype = np.int16 if labels.max(initial=0) < np.iinfo(np.int16).max else np.int32
        arrays = dict(table.to_arrays())
        arrays["labels"] = labels.astype(dtype)
        arrays["format_version"] = np.asarray(_FORMAT_VERSION)
        handle, temporary = tempfile.mkstemp(dir=self.directory, suffix=".npz.tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez_compressed(stream, **arrays)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        self._enforce_cap(keep=path)
        return path

    def size_bytes(self) -> int:
        """Return the total size of the cache entries."""
        return sum(entry.stat().st_size for entry in self._entries())

    def clear(self) -> None:
        """Remove every cache entry (the folder itself stays)."""
        for entry in self._entries():
            entry.unlink(missing_ok=True)

    def _entries(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return [p for p in self.directory.glob("*.npz") if p.is_file()]

    def _enforce_cap(self, keep: Path) -> None:
        entries = sorted(self._entries(), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in entries)
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry == keep:
                continue
            total -= entry.stat().st_size
            entry.unlink(missing_ok=True)


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
