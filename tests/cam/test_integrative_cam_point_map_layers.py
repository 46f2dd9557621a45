"""A chosen layer whose map is 1 x 1 (a global pooling) is refused, as discovery skips them.

Min-max normalisation makes a 1 x 1 map 0: chosen alone, such a layer gave an all-zero map
with a warning blaming the stages' weights.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import IntegrativeCAM


def test_a_pooled_layer_is_refused_by_name() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"layer '2' returned a 1 x 1 map.*no location"):
        IntegrativeCAM(model, layers=[model[2]]).attribute(x, target=1)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    assert IntegrativeCAM(model, layers=[model[1]]).attribute(x, target=1).amax() > 0.99
