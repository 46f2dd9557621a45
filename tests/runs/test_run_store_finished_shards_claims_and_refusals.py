"""What counts as a finished shard of a run folder, when its claim goes, and what a start refuses.

A shard is finished when its Parquet table exists, and the table is written after the arrays,
so a write that fails leaves it unfinished (computed again on the next start). Files that are
not a run's (a macOS ``._`` copy, a damaged manifest) are named, never misread.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ctc_plugin.resumable import ConfigMismatchError, RunStore, atomic


def _opened(tmp_path, config=None, **options):
    store = RunStore(tmp_path / "run")
    store.open({"job": "test", "config": config or {"seed": 1}}, **options)
    return store


def _fail(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("failing", ["arrays", "table"])
def test_a_shard_whose_write_failed_is_not_finished(tmp_path, monkeypatch, failing):
    import pyarrow.parquet as pq

    store = _opened(tmp_path)
    if failing == "arrays":
        monkeypatch.setattr(np, "savez_compressed", _fail)
    else:
        monkeypatch.setattr(pq, "write_table", _fail)
    with pytest.raises(OSError, match="No space left"):
        store.write_shard("shard-00000", pa.table({"a": [1]}), {"x": np.ones(2)})
    assert not store.is_finished("shard-00000")
    assert store.finished() == []
    assert not store.table_path("shard-00000").exists()


def test_a_lone_npz_is_a_shard_left_unfinished(tmp_path):
    store = _opened(tmp_path)
    store.arrays_path("shard-00000").write_bytes(b"arrays of a shard never finished")
    assert not store.is_finished("shard-00000")
    assert store.finished() == []


def test_hidden_parquet_files_are_no_shards(tmp_path):
    store = _opened(tmp_path)
    store.write_shard("shard-00000", pa.table({"a": [1]}), {})
    (store.shards / "._shard-00000.parquet").write_bytes(b"macOS resource fork")
    assert store.finished() == ["shard-00000"]
    assert store.read_table().column("a").to_pylist() == [1]


def test_every_finished_shard_is_read_in_the_plans_order(tmp_path):
    store = _opened(tmp_path)
    for index in (100000, 2, 99999):
        store.write_shard(f"shard-{index:05d}", pa.table({"i": [index]}), {})
    assert store.finished() == ["shard-00002", "shard-99999", "shard-100000"]
    assert store.read_table().column("i").to_pylist() == [2, 99999, 100000]


def test_reading_a_run_with_no_finished_shard_says_so(tmp_path):
    store = _opened(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no finished shard yet"):
        store.read_table()
    with pytest.raises(FileNotFoundError, match=r"missing: no such run folder \(give a run's"):
        RunStore(tmp_path / "missing").read_table()


def test_a_claim_is_removed_when_its_block_ends_finished_or_not(tmp_path):
    """A run stopped by Ctrl-C or an unreadable image left ``shards/.claim-<name>`` behind."""
    store = _opened(tmp_path)
    claim = store.shards / ".claim-shard-00000"
    with pytest.raises(KeyboardInterrupt):
        with store.claim("shard-00000", wait=False) as held:
            assert held and claim.exists()
            raise KeyboardInterrupt
    assert not claim.exists()
    with store.claim("shard-00000", wait=False) as held:
        assert held
        store.write_shard("shard-00000", pa.table({"a": [1]}), {})
    assert not claim.exists()
    assert store.finished() == ["shard-00000"]


def test_a_start_removes_the_claims_a_killed_process_left(tmp_path):
    """Killed between writing its shard and ending its claim, a process left the claim's file,
    which no later claim would take (its shard is finished): the next start removes it, and
    keeps the claim of a process that computes now."""
    store = _opened(tmp_path)
    with store.claim("shard-00000", wait=False) as held:
        assert held
        store.write_shard("shard-00000", pa.table({"a": [1]}), {})
    left = store.shards / ".claim-shard-00000"
    left.touch()  # as the killed process left it: no lock held on it
    with store.claim("shard-00001", wait=False) as held:  # another process computes shard 1
        assert held
        _opened(tmp_path)  # a start of the same run
        assert not left.exists() and (store.shards / ".claim-shard-00001").exists()


def _until_a_lock_request_waits(timeout: float = 10.0) -> None:
    """Return once Linux lists a blocked ``flock`` request (``->`` in ``/proc/locks``)."""
    locks = Path("/proc/locks")
    if not locks.exists():  # another system: give the thread time to reach the lock
        time.sleep(0.5)
        return
    deadline = time.monotonic() + timeout
    while "->" not in locks.read_text():
        assert time.monotonic() < deadline, "the waiting claim never asked for the lock"
        time.sleep(0.01)


def test_a_claim_that_waited_on_a_removed_file_claims_the_path_anew(tmp_path):
    """The holder removes the claim's file as it lets go: a claim waiting on that file gets a
    deleted file's lock, and must not hold the claim beside one that locks the new file."""
    path = tmp_path / ".claim-x"
    waiting, holding, done = threading.Event(), threading.Event(), threading.Event()

    def wait_for_it():
        waiting.set()
        with atomic.claim(path, wait=True, remove=True) as held:
            assert held
            holding.set()
            done.wait(10)

    with atomic.claim(path, wait=False, remove=True) as first:
        assert first
        thread = threading.Thread(target=wait_for_it)
        thread.start()
        waiting.wait(10)
        _until_a_lock_request_waits()  # the thread has opened the file and waits on its lock
    assert holding.wait(10)
    with atomic.claim(path, wait=False, remove=True) as third:
        assert not third  # the waiting thread holds the claim of the path
    done.set()
    thread.join(10)
    assert not path.exists()


def test_the_plan_is_written_on_every_start_and_cleared_with_an_unfinished_run(tmp_path):
    store = _opened(tmp_path, {"model": "nosuch"}, plan={"images": ["a.png"]})
    assert store.plan() == {"images": ["a.png"]}
    restarted = _opened(tmp_path, {"model": "resnet"}, restart_unfinished=True)
    assert restarted.plan() is None  # the replaced run's plan is not this one's


def test_a_run_folder_given_as_a_file_is_refused(tmp_path):
    path = tmp_path / "run"
    path.write_text("not a folder")
    with pytest.raises(ValueError, match="is a file; give a folder"):
        RunStore(path)


def test_a_manifest_of_another_version_is_refused(tmp_path):
    store = _opened(tmp_path)
    manifest = store.root / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 1}))
    with pytest.raises(ValueError, match="another version of ctc-plugin"):
        _opened(tmp_path)


def test_a_manifest_that_is_no_json_object_is_named(tmp_path):
    store = _opened(tmp_path)
    (store.root / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="manifest.json is not a JSON object"):
        _opened(tmp_path)


def test_a_run_of_another_job_is_named_as_such(tmp_path):
    _opened(tmp_path)
    with pytest.raises(ValueError, match="holds a run of test, not of other") as caught:
        RunStore(tmp_path / "run").open({"job": "other", "config": {"seed": 1}})
    assert not isinstance(caught.value, ConfigMismatchError)


def test_only_a_job_converting_its_own_layout_starts_in_a_folder_with_files(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "older-layout.json").write_text("{}")
    with pytest.raises(ValueError, match="a folder with other files and no manifest.json"):
        RunStore(folder).open({"job": "test", "config": {}})
    RunStore(folder).open({"job": "test", "config": {}}, adopt=True)
    assert RunStore(folder).manifest()["job"] == "test"


def test_a_run_with_a_shard_file_being_written_is_not_taken_over(tmp_path):
    from ctc_plugin.resumable.atomic import _host

    store = _opened(tmp_path, {"model": "nosuch"})
    writing = store.shards / f".tmp-shard-00000.npz-{_host()}-{os.getpid()}-00ff00ff"
    writing.write_bytes(b"half a shard")  # a writer still running, that holds no lock
    with pytest.raises(ConfigMismatchError, match="model: 'nosuch' there, 'resnet' now"):
        _opened(tmp_path, {"model": "resnet"}, restart_unfinished=True)
    assert store.manifest()["config"] == {"model": "nosuch"}
    assert writing.read_bytes() == b"half a shard"


def test_a_run_computing_its_first_shard_is_not_taken_over(tmp_path):
    """A start of other options took the folder from a run 79 images into its first shard:
    the lock was held only while a shard was written. A claim held means work in progress."""
    store = _opened(tmp_path, {"model": "vgg"})
    with store.claim("shard-00000", wait=False) as held:
        assert held
        with pytest.raises(ConfigMismatchError, match="model"):
            _opened(tmp_path, {"model": "resnet"}, restart_unfinished=True)
    assert store.manifest()["config"] == {"model": "vgg"}
    # once the first run has stopped (its claim let go), a start of other options takes over
    assert _opened(tmp_path, {"model": "resnet"}, restart_unfinished=True).manifest()["config"] == {
        "model": "resnet"
    }


def test_reading_a_shard_that_is_not_finished_says_so(tmp_path):
    """The message said to delete a .parquet file that does not exist."""
    store = _opened(tmp_path)
    with pytest.raises(ValueError, match="has no finished shard shard-00099 .*none yet"):
        store.read_arrays("shard-00099")
