"""A ``.parquet`` file in a run's shards folder that is no shard of the run is not read as one.

A review found: a user's copy of a shard (``shard-00000 copy.parquet``) was read as a shard of
its own, its rows twice in ``read_results``, and another tool's ``.parquet`` file beside the
shards made ``read_results`` fail with pyarrow's "Schema at index 1 was different". Only the
run's own shards (``shard-NNNNN``, numbered within its plan) are read; the other files are left
out, with a warning naming them, and the run resumes as before.
"""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctc_plugin.cli import main
from ctc_plugin.resumable import RunStore
from ctc_plugin.runs import read_results
from ctc_plugin.runs.results import all_zero_rows
from tests.runs.test_resume_refusals_name_the_cause import _explain, _folder


def _run_with_strays(tmp_path):
    """A finished run of 4 images in 2 shards, and 3 files in its shards folder that are none."""
    out = tmp_path / "run"
    assert main(_explain(_folder(tmp_path), out)) == 0
    shards = out / "shards"
    shutil.copy(shards / "shard-00000.parquet", shards / "shard-00000 copy.parquet")
    shutil.copy(shards / "shard-00001.parquet", shards / "shard-00007.parquet")  # not planned
    pq.write_table(pa.table({"x": [1, 2]}), shards / "other.parquet")
    return out


def test_read_results_reads_only_the_runs_shards_and_names_the_others(tmp_path):
    out = _run_with_strays(tmp_path)
    with pytest.warns(UserWarning, match="3 files that are no shards of this run") as caught:
        table = read_results(out)
    assert table.num_rows == 4  # one row per image: no copy counted twice
    assert sorted(table.column("name").to_pylist()) == sorted(set(table.column("name").to_pylist()))
    message = str(caught[0].message)
    for name in ("other.parquet", "shard-00000 copy.parquet", "shard-00007.parquet"):
        assert name in message, message
    assert "move them out of" in message, message
    from ctc_plugin.runs.results import run_shards

    assert run_shards(RunStore(out), warn=False) == ["shard-00000", "shard-00001"]
    assert all_zero_rows(RunStore(out), "gradcam") == {}  # reads the run's shards only


def test_a_run_with_stray_files_resumes_and_says_they_are_left_out(tmp_path, capsys):
    out = _run_with_strays(tmp_path)
    (out / "shards" / "shard-00001.parquet").unlink()  # a shard left to compute
    capsys.readouterr()
    with pytest.warns(UserWarning, match="3 files that are no shards of this run"):
        assert main(_explain(tmp_path / "photos", out)) == 0
    assert "(1 computed now, 1 finished before" in capsys.readouterr().out
