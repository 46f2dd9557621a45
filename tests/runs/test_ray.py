"""``explain-dataset --ray``: the same plan on a local two-worker Ray cluster, the same results.

The cluster test starts Ray and is marked slow (``make test-slow``); it is skipped where Ray is
not installed.
"""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from ctc_plugin.cli import main
from ctc_plugin.resumable import RayUnavailableError
from ctc_plugin.runs import RunStore, explain_dataset, read_results
from ctc_plugin.runs.results import TIMING_COLUMNS

METHODS = ["ctc", "gradcam", "lime"]
OPTIONS = dict(images=4, shard_size=1, lime_samples=8, show_progress=False)


def comparable(out):
    return read_results(out).drop_columns(list(TIMING_COLUMNS)).to_pylist()


@pytest.mark.slow  # starting Ray and its workers (each imports torch) takes about 30 s
def test_ray_on_a_local_two_worker_cluster_equals_the_single_process_run(tmp_path):
    ray = pytest.importorskip(
        "ray", reason="Ray is not installed (pip install 'ray>=2.9'): --ray not tested"
    )
    single = explain_dataset("shapes", METHODS, tmp_path / "single", **OPTIONS)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # resumes a run the embedded engine started: the configuration does not name the engine
        explain_dataset("shapes", METHODS, tmp_path / "ray", **{**OPTIONS, "images": 4})
        for name in RunStore(tmp_path / "ray").finished()[1:]:
            RunStore(tmp_path / "ray").table_path(name).unlink()
        result = explain_dataset("shapes", METHODS, tmp_path / "ray", ray=True, **OPTIONS)
    finally:
        ray.shutdown()
    assert (result.shards, result.computed) == (4, 3)
    assert comparable(result.out) == comparable(single.out)
    for name in RunStore(single.out).finished():
        want = RunStore(single.out).read_arrays(name)
        got = RunStore(result.out).read_arrays(name)
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_ray_missing_is_one_clear_error(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(
        RayUnavailableError, match=r"ray= in Python\) needs Ray.*pip install 'ray>=2\.9'"
    ):
        explain_dataset("shapes", ["gradcam"], tmp_path / "run", images=2, ray=True)
    assert not (tmp_path / "run").exists()  # refused before the run folder was set up
    argv = ["explain-dataset", "shapes", "--images", "2", "--methods", "gradcam"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--ray"]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        len(error.splitlines()) == 1
        and "(--ray, or ray= in Python) needs Ray, which is not installed" in error
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ray-workers", "2"], "add --ray"),
        (["--ray", "auto", "--ray-workers", "2"], "drop --ray-workers"),
    ],
)
def test_ray_workers_without_a_local_cluster_is_refused(tmp_path, capsys, extra, message):
    argv = ["explain-dataset", "shapes", "--images", "2", "--methods", "gradcam"]
    assert main([*argv, "--out", str(tmp_path / "run"), *extra]) == 2
    assert message in capsys.readouterr().err
