"""The benchmark refuses a model whose BatchNorm keeps no running statistics.

It normalises each batch with that batch's own statistics, and the benchmark classifies,
explains and scores images in batches: the run went ahead, with CTC reported as failed and every
other method's numbers (Saliency's gradients, the accuracy, the deletion curves) depending on
the other images of their batch.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin.harness.benchmark import BenchmarkConfig, run_benchmark

CONFIG = BenchmarkConfig(
    families=("tinyA",),
    splits=("shapes",),
    images=2,
    robustness_images=0,
    feature_sources=("oracle",),
    methods=("Saliency",),
    curve_steps=4,
    image_size=32,
    sensitivity_samples=1,
    perturbations=(("uniform", "big"),),
)


def model(**norm) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Sequential(nn.BatchNorm2d(4, **norm)),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 6),
    ).eval()


def test_a_model_that_normalises_by_its_batch_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"model tinyA/shapes: its BatchNorm2d '1\.0' keeps no "
                       r"running statistics.*give it running statistics"):  # fmt: skip
        run_benchmark(
            CONFIG, out, models={("tinyA", "shapes"): model(track_running_stats=False)},
            show_progress=False,
        )  # fmt: skip
    assert not out.exists()


def test_a_model_with_running_statistics_runs(tmp_path):
    rows = run_benchmark(
        CONFIG, tmp_path / "run", models={("tinyA", "shapes"): model()}, show_progress=False
    )
    assert {row["method"] for row in rows} == {"Saliency"}
