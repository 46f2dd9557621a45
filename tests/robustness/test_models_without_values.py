"""Every method on a model whose weights hold no values yet: lazy modules, the meta device.

- A lazy module that never ran (``nn.LazyConv2d``) made its weights at random on the method's
  first call: CTC, ``CTCAttributor`` and ``ExplainerAttribution`` explained those random weights
  and left the model changed (its lazy modules turned into ordinary ones); Integrative CAM
  failed with torch's "Attempted to use an uninitialized parameter in is_inference".
- A model built on the ``meta`` device and never loaded failed in every method with torch's bare
  "Tensor on device meta is not on the expected device cpu!".

Both are refused before anything runs, naming the tensor and how to give it values.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from .every_method import METHODS, explain

CLASSES = 4
SIZE = 16

pytestmark = pytest.mark.filterwarnings("ignore:the explainer has not been trained:UserWarning")


class Lazy(nn.Module):
    """A classifier of lazy layers: their weights are made by the first call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.LazyConv2d(6, 3, padding=1)
        self.fc = nn.LazyLinear(CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The scores."""
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _on_meta() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, CLASSES),
        ).eval()  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_a_lazy_module_that_never_ran_is_refused_and_left_lazy(method):
    model = Lazy().eval()
    with pytest.raises(ValueError, match=r"'conv.weight' is not made yet .*run the model once"):
        explain(method, model, torch.rand(2, 3, SIZE, SIZE), CLASSES)
    assert type(model.conv) is nn.LazyConv2d and type(model.fc) is nn.LazyLinear


@pytest.mark.parametrize("method", METHODS)
def test_a_lazy_model_that_ran_is_explained(method):
    model = Lazy().eval()
    images = torch.rand(2, 3, SIZE, SIZE)
    model(images)
    assert explain(method, model, images, CLASSES).shape[0] == 2


@pytest.mark.parametrize("method", METHODS)
def test_a_model_on_the_meta_device_is_refused(method):
    with pytest.raises(ValueError, match=r"'0.weight' is on the meta device.*assign=True"):
        explain(method, _on_meta(), torch.rand(2, 3, SIZE, SIZE), CLASSES)
