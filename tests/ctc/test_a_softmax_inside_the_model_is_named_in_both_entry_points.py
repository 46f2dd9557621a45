"""A softmax in the middle of a network (``nn.Softmax2d`` between convolutions) is refused
naming its module and the layer the output came through, from the Captum class and from the
Zennit attributor alike."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC, CTCAttributor, CTCComposite
from ctc_plugin.ctc.errors import UnsupportedOperationError


@pytest.mark.parametrize("entry", ["captum", "zennit"])
def test_a_softmax_inside_the_model_is_named_with_its_module(entry):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Softmax2d(), nn.Conv2d(4, 4, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip
    x = torch.rand(1, 3, 8, 8)
    mask = (torch.arange(8) // 4).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    expected = r"softmax in 1 \(Softmax2d\): the model's output is computed from its output"
    with pytest.raises(UnsupportedOperationError, match=expected):
        if entry == "captum":
            CTC(model).attribute(x, 1, feature_mask=mask)
        else:
            CTCAttributor(model, CTCComposite(), feature_mask=mask)(x, torch.eye(3)[[1]])
