"""Every method on a model that normalises its input in place (``x.sub_(mean).div_(std)``).

Calling such a model changes the tensor it is given. A method must give it a copy: the caller's
images must come back as they were, and the result must be that of the same normalisation done
out of place. CTC and Integrative CAM did; ``CTCAttributor`` ran the model on the caller's
tensor for its output weighting, and ``ExplainerAttribution`` ran the classifier on the
caller's images to read its classes, so the explainer then read the normalised images (0.17
off the masks).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from .every_method import METHODS, explain

CLASSES = 4
SIZE = 16

pytestmark = pytest.mark.filterwarnings("ignore:the explainer has not been trained:UserWarning")


def _body() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, CLASSES),
    ).eval()  # fmt: skip


class OutOfPlace(nn.Module):
    """The reference: normalises a new tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _body()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The scores of the normalised images."""
        return self.body((x - 0.5) / 0.25)


class InPlace(OutOfPlace):
    """Normalises the tensor it is given."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The scores of the normalised images (``x`` is changed)."""
        return self.body(x.sub_(0.5).div_(0.25))


def _pre_hooked() -> nn.Module:
    model = _body()
    model.register_forward_pre_hook(lambda module, args: (args[0].sub_(0.5).div_(0.25),))
    return model


def _reference_of(model: nn.Module) -> nn.Module:
    if isinstance(model, InPlace):
        return OutOfPlace()
    return nn.Sequential(_Normalise(), _body()).eval()


class _Normalise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.25


#: every method, and the Explainer also for the classes the model predicts
METHODS_AND_PREDICTED = [*METHODS, "explainer, predicted class"]


@pytest.mark.parametrize("method", METHODS_AND_PREDICTED)
@pytest.mark.parametrize("build", [InPlace, _pre_hooked], ids=["in forward", "in a pre-hook"])
def test_the_callers_images_stay_as_they_were(method, build):
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    given = images.clone()
    model = build()
    expected = explain(method, _reference_of(model), images.clone(), CLASSES)
    actual = explain(method, model, given, CLASSES)
    torch.testing.assert_close(given, images, rtol=0, atol=0)
    torch.testing.assert_close(actual, expected)
