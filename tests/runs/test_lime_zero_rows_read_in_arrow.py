"""The all-zero Lime warning of ``explain-dataset`` reads only the Lime rows' few columns.

It read the whole results table into Python lists (``to_pydict``) at the end of every run with
``lime``: on a large data set, gigabytes of Python objects for one warning. The shards are now
read one at a time, only the Lime rows and the columns the warning needs, and the scores are
compared with 0 in Arrow.
"""

from __future__ import annotations

import warnings

import pyarrow as pa
import pyarrow.parquet as pq

from ctc_plugin.resumable import RunStore
from ctc_plugin.runs import explain_dataset
from ctc_plugin.runs.results import all_zero_rows, table_schema


def _rows(*rows: tuple[str, str, list[float]]) -> pa.Table:
    """A shard table of ``(name, method, scores)`` rows (the other columns filled in)."""
    return pa.Table.from_pylist(
        [
            {
                "image": i,
                "name": name,
                "label": None,
                "shard": 0,
                "target_spec": "predicted",
                "target": 0,
                "predicted": 0,
                "method": method,
                "title": method,
                "per_segment": True,
                "segments": len(scores),
                "feature_ids": list(range(len(scores))),
                "scores": scores,
                "seconds": 0.0,
                "segment_seconds": 0.0,
            }  # fmt: skip
            for i, (name, method, scores) in enumerate(rows)
        ],
        schema=table_schema(),
    )


def test_all_zero_rows_are_the_lime_rows_whose_every_score_is_0_in_run_order(tmp_path):
    store = RunStore(tmp_path / "run")
    store.shards.mkdir(parents=True)
    nan = float("nan")
    shards = [
        _rows(
            ("b.png", "lime", [0.0, 0.0, 0.0]),
            ("b.png", "ctc", [0.0, 0.0, 0.0]),
            ("c.png", "lime", [0.0, 2.0]),
            ("d.png", "ctc", [0.0]),
        ),  # fmt: skip
        _rows(
            ("a.png", "lime", [0.0, nan]),
            ("e.png", "lime", [0.0] * 5),
            ("e.png", "lime", [-0.0] * 5),
            ("f.png", "lime", [1e-30, 0.0]),
        ),  # fmt: skip
        _rows(),  # a shard without rows
    ]
    for index, table in enumerate(shards):
        pq.write_table(table, store.table_path(f"shard-{index:05d}"))
    assert all_zero_rows(store, "lime") == {"b.png": 3, "e.png": 5}
    assert list(all_zero_rows(store, "lime")) == ["b.png", "e.png"]  # the run's order
    assert all_zero_rows(store, "ctc") == {"b.png": 3, "d.png": 1}
    assert all_zero_rows(store, "gradcam") == {}


def test_the_warning_reads_only_the_lime_rows_and_the_columns_it_needs(tmp_path, monkeypatch):
    reads = []
    read_table = pq.read_table

    def spy(source, *args, **kwargs):
        reads.append((kwargs.get("columns"), kwargs.get("filters")))
        return read_table(source, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", spy)
    options = {"images": 3, "segmenter": "grid", "segments": 4, "lime_samples": 2,
               "shard_size": 2, "show_progress": False}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = explain_dataset("shapes", ["lime", "ctc"], tmp_path / "run", **options)
    assert run.shards == 2
    # one read per shard (was one read of every column of every row, then to_pydict)
    columns = ["name", "method", "scores", "segments"]
    assert reads == [(columns, [("method", "in", ["lime"])])] * 2, reads


def test_lime_and_integrative_cam_rows_are_read_in_one_pass(tmp_path, monkeypatch):
    """With both methods that can say nothing, the warning read every shard once per method."""
    from ctc_plugin.cam.integrative import ZeroMapWarning
    from ctc_plugin.resumable import JobResult
    from ctc_plugin.runs.engine import _warn_of_empty_results
    from ctc_plugin.runs.plan import RunConfig

    store = RunStore(tmp_path / "run")
    store.shards.mkdir(parents=True)
    shards = [
        _rows(("a.png", "lime", [0.0, 0.0]), ("a.png", "integrative-cam", [1.0, 0.0])),
        _rows(("b.png", "lime", [0.5, 0.0]), ("b.png", "integrative-cam", [0.0, 0.0, 0.0])),
    ]
    for index, table in enumerate(shards):
        pq.write_table(table, store.table_path(f"shard-{index:05d}"))
    reads = []
    read_table = pq.read_table

    def spy(source, *args, **kwargs):
        reads.append(source)
        return read_table(source, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", spy)
    config = RunConfig(methods=("lime", "integrative-cam", "ctc"), lime_samples=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warn_of_empty_results(config, JobResult(store.root, 2, 2, 2, 0.0))
    assert len(reads) == 2, reads  # one read a shard (was one a shard and method)
    said = {(w.category, str(w.message).split(":")[0]) for w in caught}
    assert said == {(UserWarning, "lime"), (ZeroMapWarning, "integrative-cam")}, caught
    lime = next(str(w.message) for w in caught if w.category is UserWarning)
    assert "(the first: a.png)" in lime, lime
    icam = next(str(w.message) for w in caught if w.category is ZeroMapWarning)
    assert "(the first: b.png)" in icam, icam
