"""``explainer train --input-scale`` too small for the 96-pixel images: one line, before drawing.

Before, a scale that left the images no pixel (0.01: 96 x 0.01 rounds down to 0) ended in
torch's RuntimeError traceback from the resizing, after the training images were drawn.
"""

import pytest
import torch

from ctc_plugin.cli import main
from ctc_plugin.datasets import ShapesDataset
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.network import Explainer

TINY = ["--train-size", "4", "--val-size", "2", "--batch-size", "4", "--width", "2"]
TINY += ["--epochs", "1", "--threads", "1", "--no-progress"]


@pytest.mark.parametrize(
    ("scale", "named"),
    [("0.01", "0x0 pixels"), ("0.005", "0x0 pixels"), ("0.02", "got 1x1")],
)
def test_a_scale_too_small_is_one_line_before_any_image_is_drawn(
    tmp_path, capsys, monkeypatch, scale, named
):
    def drawn(*args, **kwargs):
        raise AssertionError("the training images were drawn before the scale was checked")

    monkeypatch.setattr(ShapesDataset, "tensors", drawn)
    out = tmp_path / "explainer.pt"
    args = ["explainer", "train", "--model", "resnet", *TINY, "--input-scale", scale]
    assert main([*args, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("ctc-plugin explainer train: error: ")
    assert "input_scale" in error and named in error
    assert not out.exists()


def test_the_explainer_refuses_a_scale_that_leaves_no_pixel():
    explainer = Explainer(build_backbone("unet-small", 6, width=2, depth=2), 6, input_scale=0.01)
    with pytest.raises(ValueError, match="input_scale 0.01 resizes 96x96 images to 0x0 pixels"):
        explainer(torch.zeros(1, 3, 96, 96))
