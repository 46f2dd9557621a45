"""A finished run in a folder this process cannot write (an archive, a read-only mount).

Run again, it is the no-op a writable folder gives ("0 computed now"), writing nothing; a run
with shards left there, or an empty such folder, is refused in one line that says why, and
another run's folder is named as another configuration, as always. The tests run as any user
(root writes through permission bits), so the folder is made read-only for the engine by
answering ``os.access`` for it.
"""

from __future__ import annotations

import os

import pytest

from ctc_plugin.cli import main
from ctc_plugin.resumable import RunStore
from ctc_plugin.resumable import job as job_module
from tests.runs.test_run_identity import _image

FAST = [
    "--methods", "gradcam", "--model", "tests.runs.test_explain_dataset:tiny", "--segmenter",
    "grid", "--segments", "4", "--shard-size", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture
def photos(tmp_path):
    for name in ("a", "b"):
        _image(tmp_path / "photos" / f"{name}.png", 12, 12)
    return tmp_path / "photos"


def _read_only(monkeypatch, folder) -> None:
    """``os.access`` says that nothing in ``folder`` can be written."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and os.path.realpath(path) == os.path.realpath(folder):
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(job_module.os, "access", access)


def _files(folder) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def _argv(photos, out, *options: str) -> list[str]:
    return ["explain-dataset", str(photos), *FAST, "--out", str(out), *options]


def test_a_finished_run_is_run_again_as_a_no_op_writing_nothing(
    photos, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert main(_argv(photos, out)) == 0
    before = _files(out)
    _read_only(monkeypatch, out)
    capsys.readouterr()
    assert main(_argv(photos, out)) == 0, capsys.readouterr().err
    assert (
        "2 images in 2 shards (0 computed now, 2 finished before or by another process)"
        in capsys.readouterr().out
    )
    assert _files(out) == before  # plan.json not rewritten, no claim or temporary file
    assert RunStore(out).read_table().num_rows > 0  # and it reads as before


def test_a_run_with_shards_left_is_refused_in_one_line(photos, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(_argv(photos, out)) == 0
    store = RunStore(out)
    store.table_path("shard-00001").unlink()
    store.arrays_path("shard-00001").unlink()
    before = _files(out)
    _read_only(monkeypatch, out)
    capsys.readouterr()
    assert main(_argv(photos, out)) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert f"cannot write into {out}" in error and "1 shard left to compute" in error, error
    assert "make it writable, or give another --out" in error
    assert _files(out) == before


def test_an_empty_folder_that_cannot_be_written_is_refused(photos, tmp_path, capsys, monkeypatch):
    out = tmp_path / "empty"
    out.mkdir()
    _read_only(monkeypatch, out)
    assert main(_argv(photos, out)) == 2
    error = capsys.readouterr().err
    assert f"cannot write into {out}" in error and "holds no run to resume" in error, error
    assert not any(out.iterdir())


def test_another_run_there_is_named_as_another_configuration(photos, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(_argv(photos, out)) == 0
    _read_only(monkeypatch, out)
    capsys.readouterr()
    assert main(["explain-dataset", str(photos), *FAST, "--segments", "9", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "holds a run with a different configuration" in error and "segments: 4 there" in error


def test_the_benchmark_which_writes_its_report_refuses_a_folder_it_cannot_write(
    tmp_path, monkeypatch
):
    from ctc_plugin.harness.benchmark import BenchmarkConfig, run_benchmark

    out = tmp_path / "bench"
    out.mkdir()
    _read_only(monkeypatch, out)
    with pytest.raises(PermissionError, match=f"cannot write into {out} .* writes its report"):
        run_benchmark(BenchmarkConfig.quick(), out, show_progress=False)
    assert not any(out.iterdir())
