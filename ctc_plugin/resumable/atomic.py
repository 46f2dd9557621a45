"""Atomic writes, and the error for a folder holding another run's configuration."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from ctc_plugin.wording import not_utf8

__all__ = [
    "STALE_AFTER",
    "ConfigMismatchError",
    "claim",
    "folder_lock",
    "is_stale_temporary",
    "read_only_folder",
    "remove_stale_temporaries",
    "write_atomic",
    "write_atomic_group",
]

#: Seconds after its last write when a temporary file whose writer cannot be checked (another
#: host, or a name without a process id) counts as left behind by a killed run.
STALE_AFTER = 24 * 3600


class ConfigMismatchError(ValueError):
    """The output folder holds a run with another configuration (or another image list).

    Args:
        root: The output folder.
        differences: ``(what, stored value, requested value)`` for everything that differs.
        kind: What the folder holds, for the message (``"run"``, ``"benchmark run"``).
        advice: What to do, the message's end.

    Attributes:
        differences: As given.
    """

    def __init__(
        self,
        root: Path,
        differences: list[tuple[str, Any, Any]],
        kind: str = "run",
        advice: str = "to resume it, give the options it was started with (the values "
        "there), or choose another --out",
    ) -> None:
        self.root, self.differences, self.kind, self.advice = root, differences, kind, advice
        listed = "; ".join(f"{key}: {old!r} there, {new!r} now" for key, old, new in differences)
        super().__init__(
            f"{root} holds a {kind} with a different configuration ({listed}); {advice}"
        )

    def naming(self, names: Mapping[str, str]) -> ConfigMismatchError:
        """The same error with each difference's key named as ``names`` names it.

        The command line names its options (``--shard-size``) where the manifest has keys
        (``shard_size``); a key ``names`` lacks is kept.
        """
        differences = [(names.get(key, key), old, new) for key, old, new in self.differences]
        return type(self)(self.root, differences, self.kind, self.advice)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by the constructor's arguments and the attributes set since (notes included)."""
        return (type(self), (self.root, self.differences, self.kind, self.advice), vars(self))


def write_atomic(path: Path, write: Callable[[Any], None], *, sync: bool = True) -> None:
    """Write ``path`` by calling ``write(handle)`` on a temporary file, then renaming it.

    A reader in another process never sees half a file, and a run killed mid-write (or a
    ``write`` that fails: disk full, file too large) leaves the previous file at ``path`` as it
    was and at most a temporary file. The temporary file lies in the same folder
    (``.tmp-<name>-*``), is created with the permissions a new file gets (the umask's, not
    ``tempfile``'s owner-only ones), is flushed and synced before ``os.replace``, and is removed
    if ``write`` fails. Its name carries the writing host and process
    (``.tmp-<name>-<host>-<pid>-<random>``), so that
    [`remove_stale_temporaries`][ctc_plugin.resumable.atomic.remove_stale_temporaries] never
    removes the file of a writer that is still running, and two writers of one file (two
    processes exporting into one folder) never share a temporary file.

    ``sync=False`` leaves out the ``fsync`` (for many small files, such as the PNGs of an
    export: a crash of the machine, unlike a killed run, may then lose the last files).
    """
    write_atomic_group([(path, write)], sync=sync)


def write_atomic_group(
    writes: Sequence[tuple[Path, Callable[[Any], None]]], *, sync: bool = True
) -> None:
    """Write several files as `write_atomic` writes one, renaming none before all are written.

    Every ``(path, write)`` pair's temporary file is written (and synced) first; only then are
    they renamed into place, in order. A ``write`` that fails (disk full) leaves every previous
    file as it was, so files that belong together (a ``.npz`` and the ``.json`` describing it)
    are never left one new, one old by a failed write; an exception between the renames
    (Ctrl-C) puts the previous files back from backups (hard links, taken before the first
    rename). A process killed outright between two renames can still leave a mixed group.
    ``sync=False`` leaves out the ``fsync`` of each temporary file, as for `write_atomic`.
    """
    written: list[tuple[Path, Path]] = []  # (temporary, path)
    backups: dict[Path, Path] = {}  # path -> its previous file, linked beside it
    for path, _ in writes:
        check_destination(Path(path))
    try:
        for path, write in writes:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            stream, temporary = _create_temporary(path)
            written.append((temporary, path))
            with stream:
                write(stream)
                stream.flush()
                if sync:
                    os.fsync(stream.fileno())
        if len(written) > 1:
            for _, path in written:  # one at a time: a failed backup leaves none behind
                if path.exists():
                    backups[path] = _backup(path)
        replaced: list[Path] = []
        try:
            for temporary, path in written:
                os.replace(temporary, path)
                replaced.append(path)
        except BaseException:
            for path in replaced:  # the group as it was
                if path in backups:
                    os.replace(backups.pop(path), path)
                else:
                    path.unlink(missing_ok=True)
            raise
    except BaseException:
        for temporary, _ in written:
            temporary.unlink(missing_ok=True)
        raise
    finally:
        for backup in backups.values():
            backup.unlink(missing_ok=True)


def read_only_folder(folder: Path) -> bool:
    """Whether ``folder`` exists and this process cannot write into it.

    Its permissions, or a read-only mount.
    """
    return folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK)


def check_destination(path: Path) -> None:
    """Refuse a destination that cannot become a file, before anything is written.

    Raises:
        IsADirectoryError: ``path`` is a folder.
        NotADirectoryError: A folder above it is a file.
    """
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give the path of a file to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(
                    f"cannot write {path}: {parent} is a file, not a folder; choose another path"
                )
            return


def _temporary_name(path: Path) -> Path:
    """``.tmp-<name>-<host>-<pid>-<random>`` beside ``path``, the name cut to fit 255 bytes.

    A name that the file system takes as it is may be too long with the temporary's prefix and
    suffix; its start is kept (the parts after it identify the writer).
    """
    suffix = f"-{_writer()}-{secrets.token_hex(4)}"
    room = 255 - len(".tmp-") - len(suffix.encode())
    cut = os.fsencode(path.name)[:room]
    # a character cut in two is left out; a name that is not UTF-8 keeps its bytes as they are
    name = cut.decode(errors="ignore") if not_utf8(path.name) is None else os.fsdecode(cut)
    return path.parent / f".tmp-{name}{suffix}"


def _backup(path: Path) -> Path:
    """A second name for ``path``'s file (a hard link, else a copy), named as a temporary."""
    while True:
        backup = _temporary_name(path)
        try:
            os.link(path, backup)
            return backup
        except FileExistsError:  # pragma: no cover - a name drawn twice
            continue
        except OSError:  # a file system without hard links
            try:
                shutil.copy2(path, backup)
            except BaseException:  # a copy cut short (no space): no partial backup kept
                backup.unlink(missing_ok=True)
                raise
            return backup


def _create_temporary(path: Path) -> tuple[BinaryIO, Path]:
    """A new, empty temporary file beside ``path``, open for binary writing, and its path."""
    while True:
        temporary = _temporary_name(path)
        try:  # exclusive: never an existing file; mode 0o666 less the umask, as open() gives
            return open(temporary, "xb"), temporary
        except FileExistsError:  # pragma: no cover - a name drawn twice
            continue
        except OSError as error:  # named by the file asked for, not the temporary one
            raise type(error)(
                error.errno,
                f"cannot write {path.name} in {path.parent} ({error.strerror})",
                str(path),
            ) from error


def _host() -> str:
    """The name of this machine as temporary file names carry it (no ``-``)."""
    return socket.gethostname().replace("-", "_") or "host"


def _writer() -> str:
    """``<host>-<pid>``: who writes a temporary file."""
    return f"{_host()}-{os.getpid()}"


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine exists (a process of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:  # it exists, owned by someone else
        return True
    except (ProcessLookupError, OverflowError):
        return False
    return True


def is_stale_temporary(path: Path, now: float | None = None) -> bool:
    """Whether the temporary file ``path`` was left by a writer that no longer runs.

    A file written on this host is stale when its writer process is gone; one written on
    another host (a cluster worker) or named without a writer (an older version) only when
    it was last written more than [`STALE_AFTER`][ctc_plugin.resumable.atomic.STALE_AFTER]
    seconds ago.
    """
    parts = path.name.rsplit("-", 3)  # .tmp-<name>, <host>, <pid>, <random>
    if len(parts) == 4 and parts[1] == _host() and parts[2].isdigit():
        return not _process_alive(int(parts[2]))
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return False  # renamed into place or removed meanwhile
    return age > STALE_AFTER


@contextmanager
def folder_lock(folder: Path, exclusive: bool) -> Iterator[None]:
    """Hold an advisory lock on ``folder`` (which must exist) within the block.

    Processes that hold it shared run together; one that holds it exclusively waits for them
    and keeps them waiting. It is ``flock`` on the folder itself, so no lock file is added, and
    the system drops it when its process dies (a killed run never leaves the folder locked).
    Where folders cannot be locked (no ``fcntl``, a file system without ``flock``), the block
    runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not a POSIX system
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError:  # pragma: no cover - a file system that cannot lock
            pass
        yield
    finally:
        os.close(descriptor)  # lets go of the lock


@contextmanager
def claim(path: Path, wait: bool, remove: bool = False) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the file ``path`` (created when missing) within the block.

    Yields whether this process holds it: with ``wait=False`` the block runs at once and gets
    ``False`` while another process (or another ``claim`` of this one) holds it; with
    ``wait=True`` it waits for the holder to let go. As with
    [`folder_lock`][ctc_plugin.resumable.atomic.folder_lock], the system drops the lock when
    its holder dies. Where files cannot be locked, every claim is held (``True``): processes
    then do the same work side by side, as they would without claims.

    With ``remove``, a holder deletes the file at the end of its block, before it lets go: a
    claim that got the lock of a file deleted meanwhile (it waited on it, or opened it just
    before) sees that ``path`` is another file or none, and claims ``path`` anew, so that two
    processes never both hold it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not a POSIX system
        yield True
        return
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:  # another holder, and wait=False
                yield False
                return
            except OSError:  # pragma: no cover - a file system that cannot lock
                yield True
                return
            if not _names_file(path, descriptor):  # deleted by its last holder: claim anew
                continue
            try:
                yield True
            finally:
                # only its own file: another process may have removed it (a takeover clears
                # a folder's leftovers) and a later claim made the path anew
                if remove and _names_file(path, descriptor):
                    with contextlib.suppress(OSError):  # read-only storage: the file stays
                        path.unlink(missing_ok=True)
            return
        finally:
            os.close(descriptor)  # lets go of the lock


def _names_file(path: Path, descriptor: int) -> bool:
    """Whether ``path`` names the file open as ``descriptor`` (not deleted or replaced)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the ``.tmp-*`` files in ``folder`` that killed writers left behind.

    Files of writers still running (in this or another process, or on another host of a
    shared folder) are kept: see
    [`is_stale_temporary`][ctc_plugin.resumable.atomic.is_stale_temporary].

    Returns:
        The files removed.
    """
    removed = []
    for leftover in Path(folder).glob(".tmp-*"):
        if leftover.is_file() and is_stale_temporary(leftover):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed
