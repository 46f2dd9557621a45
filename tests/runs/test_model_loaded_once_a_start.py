"""A start of ``explain-dataset`` loads the model once, not once for its manifest and again.

A review found: every start (a resume with nothing left too) loaded ``--model`` twice, once for
the manifest's precision and preprocessing and once for the run's checks and shards; for a
large model with a weights file that is seconds each time. The start's runner now takes the
model its manifest loaded; the job sent to Ray workers carries none.
"""

from __future__ import annotations

import pickle

import torch

import ctc_plugin.commands.models as models
from ctc_plugin.runs import explain_dataset
from ctc_plugin.runs.engine import ExplainJob
from ctc_plugin.runs.plan import RunConfig
from ctc_plugin.runs.sources import resolve_source
from tests.runs.test_explain_dataset import tiny

MODEL = "tests.runs.test_explain_dataset:tiny"


def test_a_start_and_a_resume_each_load_the_model_once(tmp_path, monkeypatch):
    weights = tmp_path / "tiny.pt"
    torch.save(tiny().state_dict(), weights)  # with weights: no check of drawn weights
    calls = []
    load = models.load_model

    def counted(name, path):
        calls.append(name)
        return load(name, path)

    monkeypatch.setattr(models, "load_model", counted)
    options = {"images": 2, "model": MODEL, "weights": weights, "segmenter": "grid",
               "segments": 4, "show_progress": False}  # fmt: skip
    for computed in (1, 0):  # the start, then a resume with nothing left
        calls.clear()
        run = explain_dataset("shapes", ["gradcam"], tmp_path / "run", **options)
        assert run.computed == computed
        assert calls == [MODEL], calls


def test_the_job_sent_to_ray_workers_carries_no_model(tmp_path):
    config = RunConfig(methods=("gradcam",), model=MODEL)
    job = ExplainJob(config, resolve_source("shapes", images=1))
    job.manifest()  # loads the model for its precision and preprocessing
    assert b"Conv2d" not in pickle.dumps(job)
