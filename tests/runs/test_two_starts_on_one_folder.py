"""Two processes on one run folder, and a start killed while it writes its manifest.

A start with other options may replace a run that finished no shard (``restart_unfinished``);
it must never do so while that run writes its first shard, or the shard of the first
configuration ends up filed under the second one's manifest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa

import ctc_plugin.resumable.store as store_module
from ctc_plugin.resumable import ConfigMismatchError, RunStore

ROOT = Path(__file__).resolve().parents[2]


def _manifest(seed: int) -> dict:
    return {"job": "explain-dataset", "config": {"seed": seed}}


def test_a_start_with_other_options_waits_for_a_shard_being_written(tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = RunStore(out)
    first.open(_manifest(1), restart_unfinished=True)
    outcome: dict[str, object] = {}

    def second_start() -> None:
        try:
            RunStore(out).open(_manifest(2), restart_unfinished=True)
            outcome["second"] = "started"
        except ConfigMismatchError as error:
            outcome["second"] = error

    real_write_atomic = store_module.write_atomic

    def write_atomic(path: Path, write) -> None:
        # the first run's arrays are in place and its table comes next: the second start now
        if path.suffix == ".parquet" and "thread" not in outcome:
            outcome["thread"] = thread = threading.Thread(target=second_start)
            thread.start()
            thread.join(2.0)  # it waits for the lock (or, unlocked, replaces the run at once)
        real_write_atomic(path, write)

    monkeypatch.setattr(store_module, "write_atomic", write_atomic)
    try:
        first.write_shard("shard-00000", pa.table({"seed": [1]}), {"seed": np.ones(1)})
        wrote = True
    except ConfigMismatchError:
        wrote = False
    outcome["thread"].join()
    monkeypatch.undo()
    store = RunStore(out)
    seed = store.manifest()["config"]["seed"]
    rows = store.read_table().to_pylist() if store.finished() else []
    # never a shard of one configuration under the manifest of the other
    assert all(row["seed"] == seed for row in rows), (seed, rows)
    assert wrote and seed == 1 and isinstance(outcome["second"], ConfigMismatchError)


_KILL_AT_MANIFEST = """
import os, signal, sys
real_replace = os.replace
def replace(source, target, *args, **kwargs):
    if str(target).endswith("manifest.json"):
        os.kill(os.getpid(), signal.SIGKILL)  # killed after the manifest's temporary file
    return real_replace(source, target, *args, **kwargs)
os.replace = replace
from ctc_plugin.resumable import RunStore
RunStore(sys.argv[1]).open({"job": "explain-dataset", "config": {"seed": 1}})
"""


def test_a_start_killed_while_writing_its_manifest_leaves_a_folder_that_starts_again(tmp_path):
    out = tmp_path / "run"
    process = subprocess.run(
        [sys.executable, "-c", _KILL_AT_MANIFEST, str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert process.returncode == -signal.SIGKILL
    assert [path.name.startswith(".tmp-manifest.json-") for path in out.iterdir()] == [True]
    store = RunStore(out)
    store.open(_manifest(1))  # the same start again: the killed writer's file is removed
    assert sorted(path.name for path in out.iterdir()) == ["manifest.json", "shards"]
    assert store.manifest()["config"] == {"seed": 1}
