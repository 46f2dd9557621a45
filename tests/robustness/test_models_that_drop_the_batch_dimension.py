"""Every method on a classifier whose forward ends in ``squeeze()``.

Such a classifier returns (N, classes) for N > 1 but (classes,) for one image. Every method must
explain it or say so for a batch of one (CTC's passes run the copies of an image as one batch).
``ExplainerAttribution`` runs the classifier on one image to read its class count (with a
target), so it met the dropped dimension on batches of any size, and blamed the explainer:
"class-count mismatch: the explainer has 5 classes but the classifier returns outputs shaped
(5,); use an explainer trained for this classifier".
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC, Explainer, ExplainerAttribution, IntegrativeCAM
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.testing import random_partition

CLASSES = 5

pytestmark = pytest.mark.filterwarnings("ignore:the explainer has not been trained:UserWarning")


class Squeezing(nn.Module):
    """A small classifier that squeezes its scores."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(6, CLASSES),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The scores, (N, classes) for N > 1 and (classes,) for one image."""
        return self.body(x).squeeze()


def _explainer() -> Explainer:
    torch.manual_seed(0)
    return Explainer(build_backbone("unet-small", CLASSES), CLASSES).eval()


@pytest.mark.parametrize(("n", "target"), [(2, [0, 1]), (1, 0), (1, None)])
def test_the_explainer_names_the_dropped_batch_dimension(n, target):
    images = torch.rand(n, 3, 16, 16)
    attribution = ExplainerAttribution(Squeezing().eval(), _explainer(), check_classifier=False)
    with pytest.raises(ValueError, match=r"shape \(5,\) for one image: it drops the batch"):
        attribution.attribute(images, target)


class OneLogit(nn.Module):
    """A classifier of one score per image, (N,) for every batch: it has no class dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((1, 2, 3))


@pytest.mark.parametrize(("n", "target"), [(2, [0, 1]), (1, 0), (1, None)])
def test_a_classifier_without_a_class_dimension_is_not_called_a_squeeze(n, target):
    """Its (1,) for one image was blamed on a squeeze() of the batch dimension.

    A squeeze() of a batch of one gives (classes,), or () for one class; (1,) is one score per
    image, for a batch of any size.
    """
    images = torch.rand(n, 3, 16, 16)
    attribution = ExplainerAttribution(OneLogit().eval(), _explainer(), check_classifier=False)
    with pytest.raises(ValueError, match=r"class-count mismatch.*shaped \((1|2),\)") as caught:
        attribution.attribute(images, target)
    assert "squeeze" not in str(caught.value)


def test_the_other_methods_explain_larger_batches():
    model, images = Squeezing().eval(), torch.rand(2, 3, 16, 16)
    mask = random_partition(16, 16, 4)
    assert CTC(model).attribute(images, [0, 1], feature_mask=mask).shape == images.shape
    assert IntegrativeCAM(model).attribute(images, [0, 1]).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="one row per example"):
        IntegrativeCAM(model).attribute(images[:1], 0)
