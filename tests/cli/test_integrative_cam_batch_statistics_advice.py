"""Integrative CAM's refusal of a BatchNorm without running statistics, for a command user.

The library says "pass bias=False"; the command has no such option, and said it all the same.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cli import main

HERE = "tests.cli.test_integrative_cam_batch_statistics_advice"


def batch_statistics_model() -> nn.Module:
    """A convolution whose BatchNorm keeps no running statistics, a ReLU and a linear head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )  # fmt: skip


@pytest.fixture
def photo(tmp_path):
    """A 40x30 photo, alone in its folder."""
    array = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    (tmp_path / "photos").mkdir()
    path = tmp_path / "photos" / "photo.png"
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("command", ["explain", "explain-dataset"])
def test_the_refusal_names_what_a_command_user_can_do(photo, capsys, command):
    out = photo.parent.parent / ("run" if command == "explain-dataset" else "fig.png")
    source = [str(photo)] if command == "explain" else [str(photo.parent)]
    argv = [command, *source, "--method", "integrative-cam",
            "--model", f"{HERE}:batch_statistics_model", "--resize", "32",
            "--segmenter", "grid", "--segments", "4", "--no-progress",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert "BatchNorm '1' keeps no running statistics" in error, error
    assert "pass bias=False" not in error, error  # no option of the command
    assert "leave integrative-cam out of --method" in error, error
    assert "gradcam, feature-ablation and lime run" in error, error
    assert "IntegrativeCAM(model, bias=False) from Python" in error, error
    assert "track_running_stats=True" in error, error
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:lime:UserWarning")
def test_what_the_refusal_sends_a_command_user_to_runs(photo, capsys):
    """The methods it names run on the model, and so does the Python call, on one image."""
    save = photo.parent / "run.npz"
    argv = ["explain", str(photo), "--model", f"{HERE}:batch_statistics_model", "--resize", "32",
            "--segmenter", "grid", "--segments", "4", "--no-progress",
            "--out", str(photo.parent / "fig.png"), "--save", str(save),
            "--method", "gradcam", "feature-ablation", "lime"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert {"image0/gradcam/scores", "image0/lime/scores"} <= set(np.load(save).files)
    model = batch_statistics_model().eval()
    maps = IntegrativeCAM(model, bias=False).attribute(torch.rand(1, 3, 32, 32), target=0)
    assert maps.shape == (1, 1, 32, 32)
