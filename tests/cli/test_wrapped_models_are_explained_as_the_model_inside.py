"""``--model module:callable`` returning ``nn.DataParallel(model)`` or ``torch.compile(model)``.

Before: messages and titles named torch's wrapper paths (``_orig_mod.norm``, ``module.norm``,
``Grad-CAM (_orig_mod.features)``), weights saved from the bare model did not load into the
wrapped one, and a compiled model filled stderr with torch's warnings about the methods' global
hooks. The command now explains the model inside, which computes the same.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ctc_plugin.cli import main

HERE = "tests.cli.test_wrapped_models_are_explained_as_the_model_inside"
FAST = ["--resize", "32", "--segmenter", "grid", "--segments", "4", "--no-progress"]


class Net(nn.Module):
    """A convolution, a BatchNorm (with or without running statistics), mean pooling, a head."""

    def __init__(self, running_statistics: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4, track_running_stats=running_statistics),
            nn.ReLU(),
        )
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, 3)."""
        return self.head(self.features(x).mean((2, 3)))


def plain() -> nn.Module:
    return Net()


def data_parallel() -> nn.Module:
    return nn.DataParallel(Net())


def compiled() -> nn.Module:
    return torch.compile(Net())


def data_parallel_batch_statistics() -> nn.Module:
    return nn.DataParallel(Net(running_statistics=False))


def compiled_batch_statistics() -> nn.Module:
    return torch.compile(Net(running_statistics=False))


@pytest.mark.parametrize("wrapper", ["data_parallel", "compiled"])
def test_refusals_name_the_model_s_own_module_paths(photo, capsys, wrapper):
    argv = ["explain", str(photo), "--model", f"{HERE}:{wrapper}_batch_statistics", *FAST,
            "--method", "ctc", "--out", str(photo.parent / "fig.png")]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert " in features.1 (BatchNorm2d)" in error, error
    assert "_orig_mod" not in error and "module." not in error, error


@pytest.mark.parametrize("wrapper", ["data_parallel", "compiled"])
def test_weights_of_the_bare_model_load_and_explain_as_it(photo, capsys, recwarn, wrapper):
    """Every method gives the bare model's numbers; Grad-CAM's title names the model's layer."""
    weights = photo.parent / "weights.pth"
    torch.manual_seed(1)
    trained = Net()
    for parameter in trained.parameters():
        parameter.data.normal_()
    torch.save(trained.state_dict(), weights)
    saved = {}
    for model in ("plain", wrapper):
        save = photo.parent / f"{model}.npz"
        argv = ["explain", str(photo), "--model", f"{HERE}:{model}", "--weights", str(weights),
                *FAST, "--method", "ctc", "integrative-cam", "gradcam",
                "--out", str(photo.parent / "fig.png"), "--save", str(save)]  # fmt: skip
        assert main(argv) == 0, capsys.readouterr().err
        saved[model] = np.load(save)
    for key in saved["plain"].files:
        np.testing.assert_array_equal(saved[wrapper][key], saved["plain"][key], err_msg=key)
    titles = json.loads((photo.parent / f"{wrapper}.json").read_text())["images"][0]["methods"]
    assert titles["gradcam"]["title"] == "Grad-CAM (features)"
    torch_noise = [w for w in recwarn if "global hooks" in str(w.message)]
    assert not torch_noise, torch_noise[0].message


@pytest.mark.parametrize(
    ("wrapper", "named"),
    [("data_parallel", "nn.DataParallel"), ("compiled", "torch.compile(...)")],
)
def test_the_command_says_it_explains_the_model_inside(photo, capsys, wrapper, named):
    argv = ["explain", str(photo), "--model", f"{HERE}:{wrapper}", *FAST,
            "--method", "ctc", "--out", str(photo.parent / "fig.png")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert (
        f"note: --model {HERE}:{wrapper} returns the model inside {named}: it is explained "
        "as that model (the same numbers on one device)" in printed
    ), printed
    assert main([*argv[:3], f"{HERE}:plain", *argv[4:]]) == 0
    assert "returns the model inside" not in capsys.readouterr().out
