"""CTC's refusal of a random draw in the pass gives advice that fits a model in eval mode.

A draw in training mode (dropout, drop path) is refused with "call model.eval() first"; a model
already in eval mode that draws (noise it adds at inference) got the same advice, which changes
nothing. Its refusal says the model is in eval mode and what to do instead.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.errors import UnsupportedOperationError


class _NoisyInEval(nn.Module):
    """A linear classifier that adds Gaussian noise to its features in eval mode too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = h + 0.1 * torch.randn_like(h)
        return self.head(h.mean((2, 3)))


def test_a_draw_in_eval_mode_is_not_told_to_call_eval() -> None:
    model = _NoisyInEval().eval()
    x = torch.rand(1, 3, 8, 8)
    mask = torch.arange(4).repeat_interleave(2).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    with pytest.raises(UnsupportedOperationError) as caught:
        CTC(model).attribute(x, target=0, feature_mask=mask)
    message = str(caught.value)
    assert "randn_like" in message
    assert "call model.eval()" not in message
    assert "eval mode" in message
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_draw_in_training_mode_is_told_to_call_eval() -> None:
    model = _NoisyInEval().train()
    x = torch.rand(1, 3, 8, 8)
    mask = torch.arange(4).repeat_interleave(2).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    with pytest.raises(UnsupportedOperationError, match=r"call model\.eval\(\) first"):
        CTC(model).attribute(x, target=0, feature_mask=mask)
