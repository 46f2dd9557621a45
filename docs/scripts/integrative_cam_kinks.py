"""Integrative CAM stage maps of a low-precision model with and without kinks (ReLU, max pooling).

For the tests' tiny CNN (`tests/cam/cam_models.tiny_cnn`, seeds 0-4) and the same CNN with
SiLU for its ReLUs and average for max pooling, four images per seed: the largest difference,
over seeds, images and stages, between the stage maps (bias term on) of the model in float16 or
bfloat16 and the float32 maps of its rounded weights on the same rounded images. The numbers of
docs/integrative-cam-decisions.md, "Low precision (measured)".

Run from the repository root: ``python docs/scripts/integrative_cam_kinks.py`` (a few seconds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from ctc_plugin import IntegrativeCAM

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the tests' models
from tests.cam.cam_models import tiny_cnn  # noqa: E402


def smooth(model: nn.Module) -> nn.Module:
    """``model`` with SiLU for its ReLUs and average for max pooling (no kinks)."""
    model.features[3] = nn.AvgPool2d(2)
    for index in (2, 6, 8):
        model.features[index] = nn.SiLU()
    return model


def stage_difference(build, dtype: torch.dtype, seed: int) -> float:
    """Largest stage-map difference of one seed's model and four images in ``dtype``."""
    x = torch.rand(4, 3, 16, 20, generator=torch.Generator().manual_seed(seed)).to(dtype)
    low = IntegrativeCAM(build(seed).to(dtype)).attribute(x, target=1, return_layer_maps=True)
    rounded = build(seed).to(dtype).float()
    high = IntegrativeCAM(rounded).attribute(x.float(), target=1, return_layer_maps=True)
    return float((low[1].maps.float() - high[1].maps).abs().max())


def main() -> None:
    """Print the largest difference per model and dtype."""
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    torch.set_num_threads(1)
    models = {
        "ReLU, max pooling": tiny_cnn,
        "SiLU, average pooling": lambda s: smooth(tiny_cnn(seed=s)),
    }
    for name, build in models.items():
        for dtype in (torch.float16, torch.bfloat16):
            worst = max(stage_difference(build, dtype, seed) for seed in range(5))
            print(f"{name:22s} {str(dtype):15s} {worst:.3g}")


if __name__ == "__main__":
    main()
