"""The run folder of the resumable engine: manifests compared as JSON reads them back."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pytest

from ctc_plugin.cli import main
from ctc_plugin.resumable import ConfigMismatchError, RunStore, json_values


@dataclass(frozen=True)
class Options:
    methods: tuple[str, ...] = ("ctc", "gradcam")
    seed: int = 1


@pytest.mark.parametrize(
    "config",
    [
        {"methods": ("ctc", "gradcam"), "seed": 1},
        json_values(Options()),
        {"nested": [(1, 2)], "seed": 1},
    ],
)
def test_a_manifest_with_tuples_resumes_its_own_run(tmp_path, config):
    first = RunStore(tmp_path / "run")
    first.open({"job": "test", "config": config})
    RunStore(tmp_path / "run").open({"job": "test", "config": config})  # the same: resumes
    assert first.manifest()["config"] == json_values(config)
    first.write_shard("shard-00000", pa.table({"a": [1]}), {})  # a finished shard to keep
    with pytest.raises(ConfigMismatchError, match="seed: 1 there, 2 now"):
        RunStore(tmp_path / "run").open({"job": "test", "config": {**config, "seed": 2}})


def test_a_mismatch_names_every_differing_key_with_both_values_in_full(tmp_path):
    long_path = "/data/" + "very-long-folder-name/" * 6 + "photos"
    stored = {"job": "test", "config": {"seed": 1}, "source": {"spec": long_path, "kind": "folder"}}
    store = RunStore(tmp_path / "run")
    store.open(stored)
    store.write_shard("shard-00000", pa.table({"a": [1]}), {})
    requested = {**stored, "config": {"seed": 2}, "source": {"spec": "/photos", "kind": "folder"}}
    with pytest.raises(ConfigMismatchError) as caught:
        RunStore(tmp_path / "run").open(requested)
    assert caught.value.differences == [("seed", 1, 2), ("source.spec", long_path, "/photos")]
    assert f"source.spec: {long_path!r} there, '/photos' now" in str(caught.value)


def test_json_values_of_a_dataclass_is_its_fields_as_json():
    assert json_values(Options()) == {"methods": ["ctc", "gradcam"], "seed": 1}


def test_a_start_that_finished_no_shard_gives_way_to_the_next_configuration(tmp_path):
    out = tmp_path / "run"
    RunStore(out).open({"job": "test", "config": {"model": "nosuch"}}, plan={"planned": 1})
    (out / "shards" / "shard-00000.npz").write_bytes(b"arrays of a shard never finished")
    store = RunStore(out)
    with pytest.raises(ConfigMismatchError):  # only when asked for (run_job does)
        store.open({"job": "test", "config": {"model": "resnet"}})
    store.open({"job": "test", "config": {"model": "resnet"}}, restart_unfinished=True)
    assert store.manifest()["job"] == "test" and store.manifest()["config"]["model"] == "resnet"
    assert store.plan() is None and not list((out / "shards").iterdir())
    store.write_shard("shard-00000", pa.table({"a": [1]}), {})
    with pytest.raises(ConfigMismatchError, match="model: 'resnet' there, 'vgg' now"):
        RunStore(out).open({"job": "test", "config": {"model": "vgg"}}, restart_unfinished=True)
    # a run under way in another process, replaced before its first shard, stops at it
    late = RunStore(tmp_path / "late")
    late.open({"job": "test", "config": {"seed": 1}})
    RunStore(tmp_path / "late").open(
        {"job": "test", "config": {"seed": 2}}, restart_unfinished=True
    )
    with pytest.raises(ConfigMismatchError, match="seed: 2 there, 1 now"):
        late.write_shard("shard-00000", pa.table({"a": [1]}), {})
    assert RunStore(tmp_path / "late").finished() == []
    # another kind of run, or files of the user's besides the run, are never cleared
    kind = tmp_path / "kind"
    RunStore(kind).open({"job": "test", "config": {}})
    with pytest.raises(ValueError, match="holds a run of test, not of other"):
        RunStore(kind).open({"job": "other", "config": {}}, restart_unfinished=True)
    other = tmp_path / "mine"
    RunStore(other).open({"job": "test", "config": {"model": "nosuch"}})
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigMismatchError):
        RunStore(other).open(
            {"job": "test", "config": {"model": "resnet"}}, restart_unfinished=True
        )


def test_a_failed_start_of_the_command_does_not_lock_its_folder(tmp_path, capsys):
    argv = ["explain-dataset", "shapes", "--images", "2", "--methods", "gradcam", "--no-progress"]
    out = ["--out", str(tmp_path / "run")]
    assert main([*argv, *out, "--model", "nosuch"]) == 2  # a typo: nothing computed
    assert "unknown model 'nosuch'" in capsys.readouterr().err
    assert main([*argv, *out, "--model", "tests.runs.test_explain_dataset:tiny"]) == 0
    assert "2 images in 1 shard (1 computed now" in capsys.readouterr().out


def test_opening_a_folder_keeps_the_temporary_files_of_a_writer_still_running(tmp_path):
    from ctc_plugin.resumable import atomic

    store = RunStore(tmp_path / "run")
    store.open({"job": "test", "config": {"seed": 1}})
    running = {}

    def write_while_another_process_opens(stream):
        stream.write(b"half a shard")
        running["files"] = sorted(p.name for p in store.shards.glob(".tmp-*"))
        RunStore(tmp_path / "run").open({"job": "test", "config": {"seed": 1}})  # a 2nd process

    atomic.write_atomic(store.arrays_path("shard-00000"), write_while_another_process_opens)
    assert len(running["files"]) == 1 and str(atomic.os.getpid()) in running["files"][0]
    assert store.arrays_path("shard-00000").read_bytes() == b"half a shard"


def test_opening_a_folder_removes_the_temporary_files_of_writers_that_are_gone(tmp_path):
    import os
    import time

    from ctc_plugin.resumable.atomic import STALE_AFTER, _host

    store = RunStore(tmp_path / "run")
    store.open({"job": "test", "config": {"seed": 1}})
    gone = store.shards / f".tmp-a.npz-{_host()}-{2**22 + 12345}-00ff00ff"  # no such pid
    alive = store.shards / f".tmp-b.npz-{_host()}-{os.getpid()}-00ff00ff"
    elsewhere = store.shards / ".tmp-c.npz-otherhost-1-00ff00ff"  # another host: by age
    old = store.shards / ".tmp-d.npz-1234abcd"  # an older version's name: by age
    for path in (gone, alive, elsewhere, old):
        path.write_bytes(b"x")
    past = time.time() - STALE_AFTER - 60
    os.utime(old, (past, past))
    RunStore(tmp_path / "run").open({"job": "test", "config": {"seed": 1}})
    assert sorted(p.name for p in store.shards.glob(".tmp-*")) == [alive.name, elsewhere.name]
