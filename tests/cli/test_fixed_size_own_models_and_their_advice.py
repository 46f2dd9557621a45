"""Own models that take one input size only (an OpenAI-CLIP-like ViT), from the command line.

Found by trying the "your model, your photo" path with a CLIP-like ViT written the OpenAI way:
its positional embedding fixes the input size, and the advice the commands print must lead to
a run.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from torch import nn

from ctc_plugin.cli import main
from ctc_plugin.runs import RunStore

FAST = ["--segmenter", "grid", "--segments", "4", "--no-progress"]


class _FixedSizeViT(nn.Module):
    """Patch embedding plus a positional embedding for a 4 x 4 grid: takes 32 x 32 images only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.positional_embedding = nn.Parameter(torch.randn(16, 8) * 0.1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        x = x + self.positional_embedding
        return self.head(x.mean(1))


def fixed_size_vit() -> nn.Module:
    torch.manual_seed(0)
    return _FixedSizeViT().eval()


MODEL = "tests.cli.test_fixed_size_own_models_and_their_advice:fixed_size_vit"


def _photos(folder, size):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        array = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"p{i}.png")
    return folder


def test_explain_runs_a_fixed_size_own_model_with_resize_and_crop(tmp_path, capsys):
    photo = _photos(tmp_path / "photos", 40) / "p0.png"
    argv = ["explain", str(photo), "--model", MODEL, "--resize", "32", "--crop", "32", *FAST]
    assert main([*argv, "--out", str(tmp_path / "fig.png")]) == 0


def test_explain_dataset_runs_a_fixed_size_model(tmp_path, capsys):
    folder = _photos(tmp_path / "photos", 40)
    argv = ["explain-dataset", str(folder), "--methods", "ctc", "--model", MODEL, *FAST]
    out = tmp_path / "run"
    assert main([*argv, "--resize", "32", "--crop", "32", "--out", str(out)]) == 0
    assert "2 images in 1 shard (1 computed now" in capsys.readouterr().out
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert (config["resize"], config["crop"]) == (32, 32)
    arrays = RunStore(out).read_arrays("shard-00000")
    assert arrays["image0/feature_mask"].shape == (32, 32)


def test_explain_dataset_refusal_of_a_wrong_size_given_names_resize_and_crop(tmp_path, capsys):
    # 40 x 40 is the size asked for, not the model's: a refusal with advice, not a traceback
    folder = _photos(tmp_path / "photos", 40)
    argv = ["explain-dataset", str(folder), "--methods", "ctc", "--model", MODEL, *FAST]
    assert main([*argv, "--resize", "40", "--crop", "40", "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert "cannot take 40x40 images" in error and "--resize N --crop N" in error, error


def test_integrative_cam_refusal_on_the_command_line_names_a_command_line_way(tmp_path, capsys):
    photo = _photos(tmp_path / "photos", 32) / "p0.png"
    clip = "tests.ctc.test_sequence_first_clip_transformer:VisionTransformer"
    argv = ["explain", str(photo), "--model", clip, "--resize", "8", "--crop", "8", *FAST]
    argv += ["--method", "ctc", "integrative-cam", "--out", str(tmp_path / "fig.png")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "integrative-cam" in error
    assert "layers=" not in error and "--method" in error.split("integrative-cam", 1)[1], error


def test_explain_refusal_of_a_size_names_resize_and_crop(tmp_path, capsys):
    photo = _photos(tmp_path / "photos", 40) / "p0.png"
    argv = ["explain", str(photo), "--model", MODEL, *FAST, "--out", str(tmp_path / "fig.png")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "cannot take" in error and "--resize" in error.split("cannot take", 1)[1], error


def test_explain_dataset_refusal_of_a_fixed_size_model_names_a_way_that_works(tmp_path, capsys):
    folder = _photos(tmp_path / "photos", 32)
    argv = ["explain-dataset", str(folder), "--methods", "ctc", "--model", MODEL, *FAST]
    assert main([*argv, "--out", str(tmp_path / "run")]) != 0
    error = capsys.readouterr().err
    assert error.startswith("ctc-plugin explain-dataset: error:"), error
    assert "cannot take 224x224 images" in error, error
    # explain-dataset's own options, not a detour through ctc-plugin explain
    assert "input size it was built for: --resize N --crop N" in error, error
    assert "cannot change" not in error and "explain --resize" not in error, error
