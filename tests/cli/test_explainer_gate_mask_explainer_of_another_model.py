"""``explainer gate --mask-explainer`` trained for another zoo model is refused.

The gated file would say it explains ``--model`` while its masks explain another classifier.
"""

import torch

from ctc_plugin.cli import main
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.network import Explainer


def _mask_explainer(path, model: str, split: str = "shapes"):
    torch.manual_seed(0)
    explainer = Explainer(build_backbone("unet-small", 6, width=2, depth=2), 6)
    with torch.no_grad():
        explainer.trained_steps.fill_(1)
        explainer.image_size.copy_(torch.tensor([96, 96]))
    explainer.save(path, {"model": model, "split": split})
    return path


def test_mask_explainer_of_another_family_is_refused(tmp_path, capsys):
    mask = _mask_explainer(tmp_path / "resnet.pt", "resnet")
    out = tmp_path / "gated.pt"
    args = ["explainer", "gate", "--model", "vgg", "--mask-explainer", str(mask)]
    assert main([*args, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("ctc-plugin explainer gate: error: ")
    assert "--mask-explainer" in error and "resnet" in error and "--model vgg" in error
    assert not out.exists()


def test_mask_explainer_of_the_same_model_is_gated(tmp_path, capsys):
    mask = _mask_explainer(tmp_path / "vgg.pt", "vgg")
    out = tmp_path / "gated.pt"
    args = ["explainer", "gate", "--model", "vgg", "--mask-explainer", str(mask)]
    assert main([*args, "--out", str(out)]) == 0
    assert out.is_file()
