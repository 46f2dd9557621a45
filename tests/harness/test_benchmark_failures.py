"""A damaged shipped explainer, methods that apply to no model, atomic reports."""

from __future__ import annotations

import pytest
from torch import nn

from ctc_plugin.harness import benchmark, report
from ctc_plugin.harness.benchmark import BenchmarkConfig, BenchmarkJob, run_benchmark
from ctc_plugin.harness.store import BenchmarkStore


def _damaged_distilled(monkeypatch):
    from ctc_plugin import zoo

    real = zoo.load_explainer

    def damaged(family, split="shapes", kind="default"):
        if kind == "distilled":
            raise ValueError("explainer-resnet-shapes-distilled.pt: sha256 differs")
        return real(family, split, kind)

    monkeypatch.setattr(zoo, "load_explainer", damaged)


def test_a_damaged_shipped_explainer_is_a_failure_with_its_message(monkeypatch, capsys):
    _damaged_distilled(monkeypatch)
    config = BenchmarkConfig(
        families=("resnet",), splits=("shapes",), images=2, robustness_images=0
    )
    job = BenchmarkJob(config)
    notes = job.planned[0]["notes"]
    assert any("Explainer-distilled" in note and "sha256 differs" in note for note in notes)
    assert not any("no trained explainer" in note for note in notes)
    assert "sha256 differs" in capsys.readouterr().err
    only = BenchmarkConfig(
        families=("resnet",),
        splits=("shapes",),
        images=2,
        robustness_images=0,
        methods=("Explainer-distilled",),
    )
    with pytest.raises(ValueError, match="sha256 differs"):
        BenchmarkJob(only)


def test_methods_that_apply_to_no_model_say_so_and_leave_the_folder_free(tmp_path):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6)
    )
    models = {("tiny", "shapes"): model.eval()}
    nothing = BenchmarkConfig(
        families=("tiny",), splits=("shapes",), images=2, robustness_images=0,
        methods=("Explainer",),  # models given: the Explainer is left out
    )  # fmt: skip
    with pytest.raises(ValueError, match="none of the methods"):
        run_benchmark(nothing, tmp_path, models=models, show_progress=False)
    other = BenchmarkConfig(
        families=("tiny",), splits=("shapes",), images=2, robustness_images=0,
        methods=("Saliency",), feature_sources=("superpixel",), curve_steps=2, image_size=32,
    )  # fmt: skip
    run_benchmark(other, tmp_path, models=models, show_progress=False)  # not blocked
    assert (tmp_path / "results.md").exists()


def test_report_files_are_written_atomically(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(report, "write_atomic", lambda path, write: written.append(path.name))
    report._write_csv(tmp_path / "results.csv", [{"a": 1}])
    report._write_text(tmp_path / "results.md", "# report\n")
    assert written == ["results.csv", "results.md"] and not list(tmp_path.iterdir())


def test_opening_a_run_for_its_report_removes_no_temporary_file(tmp_path):
    config = BenchmarkConfig(
        families=("resnet",), splits=("shapes",), images=2, robustness_images=0
    )
    BenchmarkStore(tmp_path, config)
    leftover = tmp_path / "shards" / ".tmp-a.npz-1234abcd"  # could be a running writer's
    leftover.write_bytes(b"x")
    BenchmarkStore.open(tmp_path)
    assert leftover.exists()
    assert benchmark  # the module under test is imported
