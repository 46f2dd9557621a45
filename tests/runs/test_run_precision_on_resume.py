"""A run records the floating-point type its model runs in, and a resume in another is refused.

A float64 model ran in float32 in ``explain-dataset`` until it ran in float64 as it is; a run
started by the older version and resumed by the newer one mixed both in one table, silently.
The manifest now records ``precision``; a manifest without it (an earlier version's) computed
in float32, so an old run of a float64 model is refused, while old runs of float32 models
resume.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from ctc_plugin.cli import main
from ctc_plugin.commands.model_checks import run_precision
from ctc_plugin.resumable import ConfigMismatchError
from ctc_plugin.runs import explain_dataset
from tests.cli.own_models import Net

HERE = "tests.runs.test_run_precision_on_resume"
OPTIONS = {"images": 2, "resize": 32, "segmenter": "grid", "segments": 4, "show_progress": False}


def float32_model() -> nn.Module:
    """``Net`` in float32."""
    return Net()


def float64_model() -> nn.Module:
    """``Net`` in float64."""
    return Net().double()


def float16_model() -> nn.Module:
    """``Net`` in float16 (runs in float32)."""
    return Net().half()


def env_model() -> nn.Module:
    """``Net`` in float64 where ``CTC_TEST_FLOAT64`` is set: one ``--model``, two types."""
    return Net().double() if os.environ.get("CTC_TEST_FLOAT64") else Net()


def _run(out, model: str):
    return explain_dataset("shapes", ["ctc"], out, model=f"{HERE}:{model}", **OPTIONS)


def _manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _as_an_earlier_version_wrote_it(out) -> None:
    """Remove ``precision`` from the run's manifest, which versions before it did not write."""
    manifest = _manifest(out)
    del manifest["precision"]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


@pytest.mark.parametrize(
    ("model", "precision"),
    [("float32_model", "float32"), ("float64_model", "float64"), ("float16_model", "float32")],
)
def test_the_manifest_records_the_type_the_model_runs_in(tmp_path, model, precision):
    half = "16" in model
    with pytest.warns(UserWarning, match="runs in float32") if half else nullcontext():
        _run(tmp_path / "run", model)
    assert _manifest(tmp_path / "run")["precision"] == precision


def test_run_precision_is_what_choose_precision_makes_of_the_model_and_casts_nothing():
    model = Net().double()
    assert run_precision(model) == run_precision(model, "cpu") == "float64"
    assert run_precision(model, "mps") == "float32"  # mps has no float64
    assert run_precision(Net().half(), "cpu") == "float32"
    assert run_precision(Net()) == run_precision(nn.ReLU()) == "float32"
    assert model.conv.weight.dtype == torch.float64


def test_an_earlier_versions_float32_run_of_a_float64_model_is_refused_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    _run(out, "float64_model")
    _as_an_earlier_version_wrote_it(out)  # it ran the float64 model in float32
    shards = sorted(p.stat().st_mtime_ns for p in (out / "shards").iterdir())
    with pytest.raises(ConfigMismatchError) as caught:
        _run(out, "float64_model")
    message = str(caught.value)
    assert "(precision: 'float32' there, 'float64' now)" in message, message
    assert "an earlier version of ctc-plugin, which recorded no precision" in message, message
    assert "give --model in float32 (model.float() in its callable" in message, message
    assert "choose another --out" in message, message
    argv = ["explain-dataset", "shapes", "--images", "2", "--methods", "ctc", "--model",
            f"{HERE}:float64_model", "--resize", "32", "--segmenter", "grid", "--segments", "4",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "precision: 'float32' there" in error, error
    assert "precision" not in _manifest(out)  # nothing written
    assert sorted(p.stat().st_mtime_ns for p in (out / "shards").iterdir()) == shards


@pytest.mark.parametrize("model", ["float32_model", "float16_model"])
def test_an_earlier_versions_run_of_a_float32_model_resumes(tmp_path, model):
    out = tmp_path / "run"
    first = _run(out, model)
    _as_an_earlier_version_wrote_it(out)
    again = _run(out, model)
    assert again.computed == 0 and again.shards == first.shards
    assert "precision" not in _manifest(out)  # it stays the earlier version's run


def test_a_run_in_one_precision_is_refused_in_another(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _run(out, "env_model")
    monkeypatch.setenv("CTC_TEST_FLOAT64", "1")  # the same --model, now in float64
    with pytest.raises(ConfigMismatchError) as caught:
        _run(out, "env_model")
    message = str(caught.value)
    assert "(precision: 'float32' there, 'float64' now)" in message, message
    assert "earlier version" not in message and "model.float()" in message, message
    monkeypatch.delenv("CTC_TEST_FLOAT64")
    assert _run(out, "env_model").computed == 0


def test_the_half_precision_note_of_explain_dataset_points_at_the_callers_line(tmp_path):
    """It pointed at ctc_plugin/runs/engine.py (``stacklevel=2`` from ShardRunner)."""
    with pytest.warns(UserWarning, match="float16 weights; it runs in float32") as caught:
        _run(tmp_path / "run", "float16_model")
    notes = [w for w in caught if "runs in float32" in str(w.message)]
    assert notes and all(w.filename == __file__ for w in notes), [w.filename for w in notes]
