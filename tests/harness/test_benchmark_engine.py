"""``ctc-plugin benchmark`` on the resumable engine of ``explain-dataset``.

The numbers through the engine equal those the benchmark computed before it ran on the engine
(``data/tinyA_results_before_engine.csv``: the ``results.csv`` rows of ``tinyA`` from the
benchmark's own planner and store, on one torch thread; the columns of a metric whose
definition changed since were re-made with it, e.g. ``dist_kept`` when the protocol's noise
became each image's own); every piece recomputed alone, in
another order and another runner, equals the stored one bit for bit; slow tier: a run killed
with SIGKILL and resumed equals an uninterrupted run, and ``--ray`` on a local two-worker cluster
equals the embedded run.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from ctc_plugin.cli import main
from ctc_plugin.harness.benchmark import BenchmarkJob, run_benchmark
from ctc_plugin.harness.store import (
    BenchmarkStore,
    piece_from_shard,
    piece_name,
)
from ctc_plugin.resumable import ConfigMismatchError, RayUnavailableError, RunStore, ShardQueue
from tests.harness.test_benchmark_resume import CONFIG, TIMING, _models, _table
from tests.killing import kill_when

ROOT = Path(__file__).resolve().parents[2]
ONE = replace(CONFIG, families=("tinyA",))  # five pieces: Saliency, CTC and Lime on two sources
PIECES = 5


def _run(out, **options):
    return run_benchmark(ONE, out, models=_models(), show_progress=False, threads=1, **options)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded")
    return out, _run(out)


def _same_pieces(got: Path, want: Path) -> None:
    """Every stored piece of ``want`` is in ``got`` with the same rows, summary and curves."""
    got_store, want_store = BenchmarkStore.open(got), BenchmarkStore.open(want)
    for entry in want_store.plan()["models"]:
        for label in entry["planned"]:
            a = got_store.load(entry["family"], entry["split"], label)
            b = want_store.load(entry["family"], entry["split"], label)
            assert _numbers(a.rows) == _numbers(b.rows) and a.error is b.error is None
            assert _numbers([a.summary]) == _numbers([b.summary]) and a.accuracy == b.accuracy
            assert sorted(a.curves) == sorted(b.curves) == ["deletion", "insertion"]
            for kind in a.curves:
                np.testing.assert_array_equal(a.curves[kind], b.curves[kind])


def _numbers(rows: list[dict]) -> list[dict]:
    """Rows without the measured columns, NaN as a string (``nan != nan``), for ``==``."""
    return [
        {
            key: "nan" if isinstance(value, float) and math.isnan(value) else value
            for key, value in row.items()
            if key not in TIMING
        }
        for row in rows
    ]


def test_numbers_through_the_engine_equal_the_benchmark_before_it(embedded):
    out, summary = embedded
    assert [row["method"] for row in summary] == [
        "Saliency",
        "CTC-proportional [oracle]",
        "CTC-proportional [superpixel]",
        "Lime [oracle]",
        "Lime [superpixel]",
    ]
    with (Path(__file__).parent / "data" / "tinyA_results_before_engine.csv").open() as handle:
        before = list(csv.DictReader(handle))
    now = _table(out / "results.csv")
    assert [row["method"] for row in now] == [row["method"] for row in before]
    for got, want in zip(now, before, strict=True):
        for key, value in want.items():
            if key in ("family", "split", "method"):
                assert got[key] == value
            else:  # the same computation up to float32 rounding: a different CPU, or CTC's
                # own speed-ups (sparse copies) summing in another order, move the last bits
                np.testing.assert_allclose(
                    float(got[key]), float(value), rtol=1e-6, err_msg=f"{got['method']} {key}"
                )
    # the run folder is a run of the resumable engine: one shard per piece, named after it
    store = RunStore(out)
    assert store.manifest()["job"] == "benchmark"
    assert store.finished() == sorted(piece_name("tinyA", "shapes", r["method"]) for r in now)


def test_each_piece_alone_in_another_order_equals_the_stored_piece(embedded, tmp_path):
    out, _ = embedded
    job = BenchmarkJob(ONE, _models(), threads=1)
    runner = job.runner()  # a fresh runner: no model prepared, nothing computed before
    stored = BenchmarkStore.open(out)
    for shard in reversed(job.shards()):  # Lime [superpixel] first: other random draws before
        piece = piece_from_shard(*runner.run(shard))
        want = stored.load(piece.family, piece.split, piece.label)
        assert _numbers(piece.rows) == _numbers(want.rows)
        assert _numbers([piece.summary]) == _numbers([want.summary])
        for kind in want.curves:
            np.testing.assert_array_equal(piece.curves[kind], want.curves[kind])


def test_a_models_pieces_share_an_affinity_so_ray_keeps_them_on_one_worker():
    job = BenchmarkJob(CONFIG, _models(), threads=1)
    shards = job.shards()
    assert [s.affinity for s in shards] == [f"{f}/{sp}" for f, sp, _ in job.pieces]
    assert len({s.affinity for s in shards}) == 2 and len(shards) == 2 * PIECES
    queue = ShardQueue(shards)  # two workers asking in turn: each gets one model's pieces
    handed = {0: [], 1: []}
    for turn in range(len(shards)):
        handed[turn % 2].append(queue.next(turn % 2).affinity)
    assert handed == {0: ["tinyA/shapes"] * PIECES, 1: ["tinyB/shapes"] * PIECES}


def _pieces_on_disk(out: Path) -> int:
    return len(list((out / "shards").glob("*.parquet"))) if (out / "shards").exists() else 0


@pytest.mark.slow
def test_killed_and_resumed_equals_an_uninterrupted_run(embedded, tmp_path):
    reference, _ = embedded
    out = tmp_path / "run"
    code = "from tests.harness.test_benchmark_engine import _run; import sys; _run(sys.argv[1])"
    kill_when([sys.executable, "-c", code, str(out)], lambda: _pieces_on_disk(out) >= 1, "piece")
    killed_with = _pieces_on_disk(out)
    assert 1 <= killed_with < PIECES, "the run finished before the kill"
    assert not (out / "results.csv").exists()
    _run(out)
    for name in ("results.csv", "per_image.csv"):
        assert _table(out / name) == _table(reference / name)
    _same_pieces(out, reference)
    assert not list((out / "shards").glob(".tmp-*"))


def test_report_of_a_run_under_way_and_other_kinds_of_run_folder(embedded, tmp_path, capsys):
    reference, _ = embedded
    out = tmp_path / "partial"
    BenchmarkStore(out, ONE)
    runs = RunStore(out)
    runs.open(RunStore(reference).manifest(), plan=RunStore(reference).plan())
    for name in RunStore(reference).finished()[:2]:  # two pieces of five, as a run under way
        runs.write_shard(name, *RunStore(reference).read_shard(name))
    assert main(["benchmark", "--report-only", "--out", str(out)]) == 0
    text = (out / "results.md").read_text()
    assert text.startswith("# Benchmark results (partial)")
    assert "| tinyA | shapes | in progress: 2 of 5 variants |" in text
    explained = tmp_path / "explained"
    RunStore(explained).open({"job": "explain-dataset", "config": {}})
    with pytest.raises(ValueError, match="holds a run of explain-dataset, not of benchmark"):
        BenchmarkStore(explained, ONE)
    assert main(["benchmark", "--report-only", "--out", str(explained)]) == 2
    assert "not a benchmark run" in capsys.readouterr().err


def test_ray_options_are_checked_and_a_missing_ray_is_one_clear_error(tmp_path, capsys):
    argv = ["benchmark", "--quick", "--no-progress", "--out", str(tmp_path / "run")]
    assert main([*argv, "--ray-workers", "2"]) == 2
    assert "add --ray" in capsys.readouterr().err
    assert main([*argv, "--ray", "auto", "--ray-workers", "2"]) == 2
    assert "drop --ray-workers" in capsys.readouterr().err
    assert main(["benchmark", "--report-only", "--ray", "--out", str(tmp_path / "run")]) == 2
    assert "drop --ray" in capsys.readouterr().err
    original = sys.modules.get("ray")
    sys.modules["ray"] = None  # import ray now raises ImportError
    try:
        with pytest.raises(RayUnavailableError, match=r"pip install 'ray>=2\.9'"):
            _run(tmp_path / "no-ray", ray=True)
        assert _pieces_on_disk(tmp_path / "no-ray") == 0  # refused before any work
        assert not (tmp_path / "no-ray").exists()  # and before the run folder was set up
    finally:
        if original is None:
            del sys.modules["ray"]
        else:
            sys.modules["ray"] = original


@pytest.mark.slow  # starting Ray and its workers (each imports torch) takes about 30 s
def test_ray_on_a_local_two_worker_cluster_equals_the_embedded_run(embedded, tmp_path):
    ray = pytest.importorskip(
        "ray", reason="Ray is not installed (pip install 'ray>=2.9'): --ray not tested"
    )
    reference, _ = embedded
    out = tmp_path / "ray"
    # resumes a run the embedded engine started: the configuration does not name the engine
    BenchmarkStore(out, ONE)
    first = RunStore(reference).finished()[0]
    RunStore(out).write_shard(first, *RunStore(reference).read_shard(first))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        _run(out, ray=True)
    finally:
        ray.shutdown()
    assert _pieces_on_disk(out) == PIECES
    for name in ("results.csv", "per_image.csv"):
        assert _table(out / name) == _table(reference / name)
    _same_pieces(out, reference)


def _write_legacy_run(root: Path, source: Path) -> None:
    """The run ``source`` in the benchmark's earlier own layout (config.json, pieces/)."""
    store = BenchmarkStore.open(source)
    (root / "pieces").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"format": 1, "config": store.config}))
    for entry in store.plan()["models"]:
        family, split = entry["family"], entry["split"]
        folder = root / "pieces" / f"{family}--{split}"
        folder.mkdir()
        info = store.model_info(family, split)
        model = {"accuracy": info.accuracy, "planned": info.planned, "notes": info.notes}
        (folder / "model.json").write_text(json.dumps({**model, "seconds": info.seconds}))
        for label in entry["planned"]:
            piece = store.load(family, split, label)
            where = folder / quote(label, safe="")
            where.mkdir()
            meta = {k: getattr(piece, k) for k in ("label", "summary", "error", "seconds")}
            meta |= {"machine": piece.machine, "timings": piece.timings}
            (where / "piece.json").write_text(json.dumps(meta))
            with (where / "rows.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(piece.rows[0]))
                writer.writeheader()
                writer.writerows(piece.rows)
            np.savez(where / "curves.npz", **piece.curves)


def test_a_run_of_the_earlier_layout_is_converted_with_its_numbers(embedded, tmp_path, capsys):
    reference, _ = embedded
    legacy = tmp_path / "legacy"
    _write_legacy_run(legacy, reference)
    before = sorted(p.relative_to(legacy) for p in legacy.rglob("*"))
    assert main(["benchmark", "--report-only", "--out", str(legacy)]) == 0
    assert "converted 5 pieces of the earlier benchmark layout" in capsys.readouterr().err
    for name in ("results.csv", "per_image.csv"):  # timings too: they come from the files
        assert _table(legacy / name, drop=set()) == _table(reference / name, drop=set())
    _same_pieces(legacy, reference)
    assert set(before) <= {p.relative_to(legacy) for p in legacy.rglob("*")}  # old files kept
    # converted once; a resumed run computes nothing (every piece is there: the same timings)
    _run(legacy)
    assert "converted" not in capsys.readouterr().err
    assert _table(legacy / "results.csv", drop=set()) == _table(
        reference / "results.csv", drop=set()
    )
    with pytest.raises(ConfigMismatchError, match="lime_samples: 8 there, 9 now"):
        run_benchmark(replace(ONE, lime_samples=9), legacy, models=_models(), show_progress=False)
