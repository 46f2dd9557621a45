"""Every method of the library on a batch of two images, for the tests of model configurations.

``explain(method, model, images, classes)`` runs one of `METHODS` (CTC in each bias sharing, the
Zennit route with `CTCComposite`, Integrative CAM, an untrained Explainer with the model as its
classifier) for the classes 0 and 1 of the two images, on six random segments; `model_state`
is what a call must leave as it was.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ctc_plugin import (
    CTC,
    CTCAttributor,
    CTCComposite,
    Explainer,
    ExplainerAttribution,
    IntegrativeCAM,
)
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.testing import random_partition

#: The methods that follow the model's layers (CTC's three bias sharings, the Zennit route and
#: Integrative CAM).
LIBRARY_METHODS = ["ctc-none", "ctc-proportional", "ctc-reference", "attributor", "integrative-cam"]

#: Those and the Explainer, which only reads the classifier's scores.
METHODS = [*LIBRARY_METHODS, "explainer"]


def explain(method: str, model: nn.Module, images: torch.Tensor, classes: int) -> torch.Tensor:
    """``method``'s attributions of the classes 0 and 1 of two ``images`` by ``model``.

    ``"explainer, predicted class"`` explains the classes the model predicts.
    """
    mask = random_partition(images.shape[-2], images.shape[-1], 6)
    if method.startswith("ctc-"):
        return CTC(model, bias_sharing=method[4:]).attribute(images, [0, 1], feature_mask=mask)
    if method == "attributor":
        with CTCAttributor(model, CTCComposite(), feature_mask=mask) as attributor:
            return attributor(images, torch.eye(classes)[[0, 1]])[1]
    if method == "integrative-cam":
        return IntegrativeCAM(model).attribute(images, [0, 1])
    torch.manual_seed(0)
    explainer = Explainer(build_backbone("unet-small", classes), classes).eval()
    target = None if method == "explainer, predicted class" else [0, 1]
    return ExplainerAttribution(model, explainer, check_classifier=False).attribute(images, target)


def model_state(
    model: nn.Module, values: Callable[[object], object] = lambda value: value.clone()
) -> tuple:
    """The model's hooks and modes per module, and its state dict's ``values``."""
    hooks = [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), m.training)
        for m in model.modules()
    ]
    return hooks, {key: values(value) for key, value in model.state_dict().items()}
