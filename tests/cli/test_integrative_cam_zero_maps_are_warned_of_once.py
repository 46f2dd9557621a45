"""Integrative CAM maps that are zero everywhere, in ``explain`` and ``explain-dataset``.

The library's warning was shown once for a whole run (Python shows a repeated warning once),
naming "example(s) [0]" (each image is example 0 of its own call, so no image was named) and
Python arguments the command has no option for. Now each command says it once, as it says Lime's
all-zero scores: how many images, the first, and what a command user can do.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ctc_plugin.cam import EmptyMapWarning, IntegrativeCAM, ZeroMapWarning
from ctc_plugin.cli import main

HERE = "tests.cli.test_integrative_cam_zero_maps_are_warned_of_once"
FAST = ["--resize", "32", "--segmenter", "grid", "--segments", "4", "--no-progress"]


def negative_head_model() -> nn.Module:
    """A convolution without bias whose every channel lowers every class: no positive CAM."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    )  # fmt: skip
    with torch.no_grad():
        model[-1].weight.fill_(-1.0)
    return model


@pytest.fixture
def photos(tmp_path):
    """Three 40x30 photos in a folder."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        array = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / name)
    return folder


def _empty_map_warnings(argv: list[str]) -> list[str]:
    """The warnings of empty Integrative CAM maps of the command ``argv``, which succeeds."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == 0
    return [str(w.message) for w in caught if issubclass(w.category, EmptyMapWarning)]


def test_the_model_s_maps_are_zero_and_the_library_says_so():
    """The case the command meets: the library warns of it, per call."""
    with pytest.warns(ZeroMapWarning, match=r"example\(s\) \[0\] is zero everywhere"):
        maps = IntegrativeCAM(negative_head_model().eval()).attribute(
            torch.rand(1, 3, 32, 32), target=0
        )
    assert float(maps.max()) == 0


def test_explain_says_it_once_with_the_count_and_the_first_image(photos, tmp_path):
    images = [str(photos / name) for name in ("a.png", "b.png", "c.png")]
    argv = ["explain", *images, "--model", f"{HERE}:negative_head_model", *FAST,
            "--method", "integrative-cam", "ctc", "--out", str(tmp_path / "fig.png")]  # fmt: skip
    said = _empty_map_warnings(argv)
    assert len(said) == 1, said
    assert said[0].startswith(
        f"integrative-cam: the map is zero everywhere on 3 of 3 images (the first: {images[0]})"
    ), said[0]
    assert "example(s)" not in said[0] and "use ctc or feature-ablation" in said[0]
    one = _empty_map_warnings([*argv[:2], *argv[4:]])  # a.png alone
    assert len(one) == 1 and "zero everywhere: " in one[0] and "images" not in one[0], one


def test_explain_dataset_says_it_once_for_the_run(photos, tmp_path):
    argv = ["explain-dataset", str(photos), "--methods", "integrative-cam", "--model",
            f"{HERE}:negative_head_model", *FAST, "--shard-size", "2",
            "--out", str(tmp_path / "run")]  # fmt: skip
    said = _empty_map_warnings(argv)
    assert len(said) == 1, said
    assert said[0].startswith(
        "integrative-cam: the map is zero everywhere on 3 of 3 images (the first: a.png)"
    ), said[0]
