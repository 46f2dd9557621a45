"""A constant added to the signal that is sized for the model's batch, not broadcastable to the
copies (``self.conv(x) + p`` with ``p`` of shape (N, C, 1, 1)), is refused with CTC's own error
naming its shape, out of place as in place; before, the out-of-place sum raised torch's bare
broadcasting ``RuntimeError``. The model is left as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.errors import UnsupportedOperationError
from ctc_plugin.ctc.speedups import SPEC


class _PerExampleShift(nn.Module):
    """A convolution plus a constant with one row per example of a batch of two."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.register_buffer("shift", torch.randn(2, 4, 1, 1))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.inplace:
            y += self.shift
        else:
            y = y + self.shift
        return self.head(torch.relu(y).mean((2, 3)))


@pytest.mark.parametrize("inplace", [False, True], ids=["out of place", "in place"])
@pytest.mark.parametrize("spec", [False, True], ids=["default", "spec"])
def test_a_constant_sized_for_the_model_batch_is_refused_naming_its_shape(inplace, spec):
    torch.manual_seed(0)
    model = _PerExampleShift(inplace).eval()
    x = torch.rand(2, 3, 8, 8)
    mask = (torch.arange(64).view(1, 1, 8, 8) // 16).expand(2, 1, 8, 8)
    before = model(x)
    ctc = CTC(model)
    if spec:
        ctc._speedups = SPEC
    with pytest.raises(UnsupportedOperationError, match=r"\(2, 4, 1, 1\)"):
        ctc.attribute(x, target=0, feature_mask=mask)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
