"""``write_atomic``, its temporary files, and which of them count as left by a killed writer.

A file with its final name is always complete: each temporary file is flushed and synced before
its rename, a group is renamed in its given order, and a failure leaves the previous files and no
temporary one. A temporary file's name says who writes it (``.tmp-<name>-<host>-<pid>-<random>``),
so that only those of writers that are gone are removed, whatever the file's own name holds.
"""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from ctc_plugin.resumable import atomic


def _names(folder):
    return sorted(path.name for path in folder.iterdir())


def test_each_temporary_is_flushed_and_synced_before_its_rename(tmp_path, monkeypatch):
    first, second = tmp_path / "run.npz", tmp_path / "run.json"
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append(("synced", os.fstat(descriptor).st_size))
        return real_fsync(descriptor)

    def replace(source, target, *args, **kwargs):
        events.append(("renamed", os.path.basename(target)))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic.write_atomic_group(
        [(first, lambda stream: stream.write(b"12345")), (second, lambda s: s.write(b"abc"))]
    )
    # every byte is on disk (flushed, then synced) before any file takes its final name
    assert events == [("synced", 5), ("synced", 3), ("renamed", "run.npz"), ("renamed", "run.json")]


def test_a_write_into_a_missing_folder_creates_it(tmp_path):
    path = tmp_path / "new" / "deeper" / "file.json"
    atomic.write_atomic(path, lambda stream: stream.write(b"{}"))
    assert path.read_bytes() == b"{}"
    assert _names(path.parent) == ["file.json"]


def test_a_failed_write_leaves_the_previous_files_and_no_temporary_one(tmp_path):
    first, second = tmp_path / "run.npz", tmp_path / "run.json"
    first.write_bytes(b"old data")

    def disk_full(stream):
        stream.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic.write_atomic_group([(first, lambda s: s.write(b"new data")), (second, disk_full)])
    assert first.read_bytes() == b"old data"
    assert _names(tmp_path) == ["run.npz"]  # the second file never existed, no .tmp-* left


@pytest.mark.parametrize("host", ["node-7", "gpu-a-01"])
def test_a_host_name_with_dashes_still_names_the_writer(tmp_path, monkeypatch, host):
    monkeypatch.setattr(atomic.socket, "gethostname", lambda: host)
    names = {}
    atomic.write_atomic(
        tmp_path / "shard-00000.npz",
        lambda stream: names.update(own=next(tmp_path.glob(".tmp-*")).name),
    )
    own = tmp_path / names["own"]
    own.write_bytes(b"x")  # as the running writer left it, fresh
    assert not atomic.is_stale_temporary(own)  # this process runs
    gone = tmp_path / own.name.replace(f"-{os.getpid()}-", f"-{2**22 + 12345}-")
    gone.write_bytes(b"x")
    assert atomic.is_stale_temporary(gone)  # its writer is gone: stale at once, not in a day


def test_a_file_name_with_dashes_is_read_from_the_right(tmp_path):
    gone = tmp_path / f".tmp-shard-00000.npz-{atomic._host()}-{2**22 + 12345}-00ff00ff"
    alive = tmp_path / f".tmp-shard-00001.npz-{atomic._host()}-{os.getpid()}-00ff00ff"
    for path in (gone, alive):
        path.write_bytes(b"x")
    assert atomic.remove_stale_temporaries(tmp_path) == [gone]
    assert _names(tmp_path) == [alive.name]


def test_a_writer_of_another_user_counts_as_running(tmp_path, monkeypatch):
    other = tmp_path / f".tmp-a.npz-{atomic._host()}-4242-00ff00ff"
    other.write_bytes(b"x")

    def not_permitted(pid, signal):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "kill", not_permitted)
    assert not atomic.is_stale_temporary(other)


def test_a_name_with_process_id_zero_has_no_writer(tmp_path):
    # os.kill(0, 0) would signal this process's own group and succeed
    nobody = tmp_path / f".tmp-a.npz-{atomic._host()}-0-00ff00ff"
    nobody.write_bytes(b"x")
    assert atomic.is_stale_temporary(nobody)


def test_a_temporary_of_another_host_that_is_gone_is_not_stale(tmp_path):
    gone = tmp_path / ".tmp-a.npz-otherhost-1-00ff00ff"  # renamed into place meanwhile
    assert not atomic.is_stale_temporary(gone, now=time.time() + 10 * atomic.STALE_AFTER)


def test_only_temporary_files_are_removed_however_old_the_others(tmp_path):
    past = time.time() - 10 * atomic.STALE_AFTER
    kept = [tmp_path / "manifest.json", tmp_path / "photo-host-1-abc.png"]
    for path in kept:
        path.write_bytes(b"x")
        os.utime(path, (past, past))
    folder = tmp_path / f".tmp-a-{atomic._host()}-{2**22 + 12345}-00ff00ff"  # not a file
    folder.mkdir()
    assert atomic.remove_stale_temporaries(tmp_path) == []
    assert _names(tmp_path) == sorted([folder.name, *(path.name for path in kept)])


def test_an_exclusive_folder_lock_keeps_shared_holders_out_and_shared_ones_run_together(
    tmp_path,
):
    fcntl = pytest.importorskip("fcntl")

    def can_lock(kind):
        descriptor = os.open(tmp_path, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(descriptor)

    with atomic.folder_lock(tmp_path, exclusive=True):
        assert not can_lock(fcntl.LOCK_SH)
    with atomic.folder_lock(tmp_path, exclusive=False):
        assert can_lock(fcntl.LOCK_SH)
        assert not can_lock(fcntl.LOCK_EX)
    assert can_lock(fcntl.LOCK_EX)  # let go at the block's end


def test_a_claim_is_held_once_and_a_waiting_claim_gets_it_when_let_go(tmp_path):
    pytest.importorskip("fcntl")
    path = tmp_path / ".claim-shard-00000"
    waited = {}

    def wait_for_it():
        with atomic.claim(path, wait=True) as held:
            waited["held"] = held

    with atomic.claim(path, wait=False) as first:
        with atomic.claim(path, wait=False) as second:
            assert (first, second) == (True, False)
        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        waiter.join(0.2)
        assert "held" not in waited  # still waiting: the first claim holds it
    waiter.join(60)
    assert waited == {"held": True}


def test_a_temporary_of_another_host_is_kept_for_a_day(tmp_path):
    # a cluster worker's file cannot be checked: only a day without writes makes it stale
    elsewhere = tmp_path / ".tmp-a.npz-otherhost-1-00ff00ff"
    elsewhere.write_bytes(b"x")
    written = elsewhere.stat().st_mtime
    assert not atomic.is_stale_temporary(elsewhere, now=written + 2 * 3600)
    assert atomic.is_stale_temporary(elsewhere, now=written + 24 * 3600 + 60)
