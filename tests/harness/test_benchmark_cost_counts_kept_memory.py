"""The benchmark's ``memory_mib`` counts the memory a method keeps between its calls.

CTC's sparse pass keeps spare chunks for its next call. After the warm-up they were resident
when ``measure_cost`` took its starting level, so the timed call's use of them never counted:
CTC's memory came out about half of what its call needs, against methods that keep nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from ctc_plugin.ctc.workspace import SPARE_CHUNKS
from ctc_plugin.harness import scoring
from ctc_plugin.harness.benchmark import BenchmarkConfig, run_benchmark


def test_every_timed_call_starts_with_no_chunk_kept(tmp_path, monkeypatch):
    kept_at_start = []
    real = scoring.measure_cost

    def measured(*args, **kwargs):
        kept_at_start.append(len(SPARE_CHUNKS))
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "measure_cost", measured)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6),
    ).eval()  # fmt: skip
    config = BenchmarkConfig(
        families=("tiny",), splits=("shapes",), images=4, batch_size=2, robustness_images=0,
        methods=("CTC-proportional",), feature_sources=("superpixel",), curve_steps=2,
        image_size=64,
    )  # fmt: skip
    run_benchmark(config, tmp_path, models={("tiny", "shapes"): model}, show_progress=False)
    assert kept_at_start == [0, 0]
