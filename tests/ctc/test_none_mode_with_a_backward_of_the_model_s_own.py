"""``"none"`` sharing's one-backward shortcut meets a gradient the model defines itself.

The shortcut takes the scores from ``torch.autograd.grad`` through the model's own graph. A
custom ``autograd.Function`` (DANN's gradient reversal, a clamped straight-through estimator) or
a ``Tensor.register_hook`` made in ``forward`` changes that gradient without changing a single
forward value: the scores came out sign-flipped or scaled, and a hook that records gradients
ran during the CTC call. The pass of the copies, which reads forward values only, is the answer.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin import CTC


class _Reversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: D102
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return -grad


class _Net(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)
        self.kind = kind
        self.recorded: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x))
        if self.kind == "reversal":
            h = _Reversal.apply(h)
        elif self.kind == "clamping hook" and h.requires_grad:
            h.register_hook(lambda g: g.clamp(-1e-4, 1e-4))
        elif self.kind == "recording hook" and h.requires_grad:
            h.register_hook(self.recorded.append)
        elif self.kind == "reversal at the output":
            return _Reversal.apply(self.head(h.mean((2, 3))))
        return self.head(h.mean((2, 3)))


def _scores(model: nn.Module) -> torch.Tensor:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(32) // 8).view(1, 1, 1, 32).expand(2, 1, 32, 32)
    _, scores = CTC(model, bias_sharing="none").attribute(
        x, torch.tensor([1, 2]), feature_mask=mask, return_feature_scores=True
    )
    return scores.scores


@pytest.mark.parametrize(
    "kind", ["reversal", "clamping hook", "recording hook", "reversal at the output"]
)
def test_a_gradient_of_the_model_s_own_leaves_the_scores_as_its_forward_values_give(kind):
    plain = _scores(_Net("plain").eval())
    model = _Net(kind).eval()
    torch.testing.assert_close(_scores(model), plain, rtol=1e-5, atol=1e-7)
    assert model.recorded == []  # the model's hook did not run during the call
