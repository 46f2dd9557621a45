"""A short training run from scratch beats Grad-CAM at localising the evidence (slow)."""

from __future__ import annotations

import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch.utils.data import DataLoader, TensorDataset

from ctc_plugin import zoo
from ctc_plugin.datasets import TRAIN_SEED, ShapesDataset
from ctc_plugin.evaluation.localisation import binarize, iou
from ctc_plugin.explainer.attribution import ExplainerAttribution
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.explainer.presets import ExplainerHyperparameters

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not zoo.weights_path("resnet").is_file(), reason="zoo resnet weights missing")
def test_short_run_localises_better_than_grad_cam():
    model = zoo.load("resnet")
    images, labels = ShapesDataset("shapes", size=800, seed=TRAIN_SEED).tensors()
    torch.manual_seed(0)
    explainer = Explainer(build_backbone("unet-small", 6), 6)
    explainer.fit(
        model,
        DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True),
        config=ExplainerHyperparameters(lr=1e-2), baseline=0.5, epochs=3, seed=0,
        show_progress=False,
    )  # fmt: skip
    test = ShapesDataset("shapes", size=50, seed=2024)
    items = [test[i] for i in range(len(test))]
    x = torch.stack([item["image"] for item in items])
    y = torch.tensor([item["label"] for item in items])
    evidence = torch.stack([item["evidence"] for item in items])
    masks = ExplainerAttribution(model, explainer).attribute(x, y)[:, 0]
    layer = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with GradCAM(model, [layer]) as cam:
        maps = torch.from_numpy(cam(x, targets=[ClassifierOutputTarget(int(c)) for c in y]))
    ours = iou(binarize(masks, 0.5), evidence).nanmean().item()
    theirs = iou(binarize(maps, 0.5), evidence).nanmean().item()
    assert ours > theirs + 0.1, f"explainer IoU {ours:.3f} vs Grad-CAM {theirs:.3f}"
