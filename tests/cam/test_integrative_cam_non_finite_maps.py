"""A stage whose gradient is not finite (a square root at 0 after it) is refused, not NaN.

The model's output is finite, so the target check passes; the NaN comes from the backward pass
(``d sqrt(a)/da`` is infinite where the ReLU made ``a`` zero). A NaN map is no explanation: the
call names the stage and leaves the model as it was.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import IntegrativeCAM


class _RootAfterFirstStage(nn.Module):
    """conv - ReLU - sqrt - conv - ReLU - pool - linear: infinite derivatives where a = 0."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        root = torch.sqrt(torch.relu(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(root)).mean(dim=(2, 3)))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_a_stage_with_an_infinite_gradient_is_named_not_returned_as_nan() -> None:
    model = _RootAfterFirstStage().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(model(x)).all()
    with pytest.raises(ValueError, match=r"not finite.*'conv1'.*sqrt"):
        IntegrativeCAM(model).attribute(x, target=1)
    assert _hooks(model) == 0
    # the stage after the square root is finite: choosing it explains the image
    maps = IntegrativeCAM(model, layers=[model.conv2]).attribute(x, target=1)
    assert torch.isfinite(maps).all()
