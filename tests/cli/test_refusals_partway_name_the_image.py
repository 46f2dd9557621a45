"""A refusal partway through several images names the image it stopped at.

``explain a.png b.png c.png`` and ``explain-dataset FOLDER`` stopped at the third image with
CTC's refusal of an operation the model runs on that image only, or a method's refusal of the
image, without saying which image it was.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ctc_plugin.cli import main
from tests.cli.own_models import Net

HERE = "tests.cli.test_refusals_partway_name_the_image"
FAST = ["--resize", "32", "--segmenter", "grid", "--segments", "4", "--no-progress"]


class SortsWideImages(Net):
    """Sorts the pixels of wide images (an operation CTC refuses); others go straight through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, 3)."""
        if x.shape[-1] > 64:
            x = torch.sort(x, dim=-1).values
        return super().forward(x)


class RefusesWideCopies(Net):
    """Raises a ValueError on several copies of a wide image (a method's pass)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, 3)."""
        if x.shape[0] > 1 and x.shape[-1] > 64:
            raise ValueError("no copies of wide images")
        return super().forward(x)


class ChangesOnWideImages(Net):
    """Fails on wide images only: converts them to float64 (``kind="double"``: torch's dtype
    error on its float32 layers), or returns their scores without the batch dimension
    (``"unbatched"``) or in a tuple (``"tuple"``)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor):
        """Class scores (N, 3); for a wide image, what ``kind`` says."""
        wide = x.shape[-1] > 64
        if wide and self.kind == "double":
            x = x.double()
        scores = super().forward(x)
        if wide and self.kind == "unbatched":
            return scores[0]
        return (scores,) if wide and self.kind == "tuple" else scores


def doubles_wide_images() -> nn.Module:
    """``ChangesOnWideImages("double")``."""
    return ChangesOnWideImages("double")


def unbatches_wide_images() -> nn.Module:
    """``ChangesOnWideImages("unbatched")``."""
    return ChangesOnWideImages("unbatched")


def tuples_wide_images() -> nn.Module:
    """``ChangesOnWideImages("tuple")``."""
    return ChangesOnWideImages("tuple")


def sorts_wide_images() -> nn.Module:
    """``SortsWideImages``."""
    return SortsWideImages()


def refuses_wide_copies() -> nn.Module:
    """``RefusesWideCopies``."""
    return RefusesWideCopies()


@pytest.fixture
def photos(tmp_path):
    """A folder of two 40x30 photos and, third, a wide 80x20 one."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("a.png", (30, 40, 3)), ("b.png", (30, 40, 3)), ("c.png", (20, 80, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / name)
    return folder


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


@pytest.mark.parametrize(
    ("model", "said"),
    [("sorts_wide_images", "CTC cannot propagate"), ("refuses_wide_copies", "no copies of wide")],
)
def test_explain_names_the_image_it_stopped_at(photos, capsys, model, said):
    out = photos.parent / "fig.png"
    images = [str(photos / name) for name in ("a.png", "b.png", "c.png")]
    argv = ["explain", *images, "--model", f"{HERE}:{model}", *FAST, "--out", str(out)]
    error = _error(capsys, argv)
    assert said in error and f"{photos / 'c.png'}: " in error, error
    assert "a.png" not in error and not out.exists()


@pytest.mark.parametrize(
    ("model", "said"),
    [("sorts_wide_images", "CTC cannot propagate"), ("refuses_wide_copies", "no copies of wide")],
)
def test_explain_dataset_names_the_image_it_stopped_at(photos, capsys, model, said):
    argv = ["explain-dataset", str(photos), "--methods", "ctc", "--model", f"{HERE}:{model}",
            *FAST, "--out", str(photos.parent / "run")]  # fmt: skip
    error = _error(capsys, argv)
    assert said in error and "c.png: " in error, error


def test_a_segmenter_refusal_names_the_image_in_explain_dataset(photos, capsys):
    model = f"{HERE}:sorts_wide_images"
    argv = ["explain-dataset", str(photos), "--methods", "ctc", "--model", model,
            "--resize", "32", "--segmenter", "grid", "--segments", "2000", "--no-progress",
            "--out", str(photos.parent / "run")]  # fmt: skip
    error = _error(capsys, argv)
    # was: "a 45x45 grid does not fit a 32x42 image", neither the image nor the option named
    assert "--segments 2000: a.png: " in error and "at most --segments 1024" in error, error


@pytest.mark.parametrize(
    ("model", "said"),
    [
        ("doubles_wide_images", "with torch's error for two floating-point types"),
        ("unbatches_wide_images", "returns a tensor of float32 shaped (3,) for one image"),
        ("tuples_wide_images", "the model returned tuple, not a tensor of scores"),
    ],
)
@pytest.mark.parametrize("command", ["explain", "explain-dataset"])
def test_a_models_refused_output_or_dtype_names_the_image(photos, capsys, command, model, said):
    """explain-dataset named no image for torch's dtype error, and neither command for an
    output that is no row of class scores (``scores_row``)."""
    model = f"{HERE}:{model}"
    if command == "explain":
        images = [str(photos / name) for name in ("a.png", "b.png", "c.png")]
        argv = ["explain", *images, "--model", model, *FAST, "--out", str(photos.parent / "f.png")]
        image = str(photos / "c.png")
    else:
        argv = ["explain-dataset", str(photos), "--methods", "ctc", "--model", model, *FAST,
                "--out", str(photos.parent / "run")]  # fmt: skip
        image = "c.png"
    error = _error(capsys, argv)
    assert said in error and f"--model {model}: {image}: " in error, error
    assert "a.png" not in error, error
