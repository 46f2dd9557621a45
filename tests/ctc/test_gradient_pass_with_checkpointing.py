"""``"none"`` sharing on a model that checkpoints its blocks gives the scores it gives without.

``"none"`` takes its scores from one gradient of the linearised network. A block under
``torch.utils.checkpoint`` computes its forward again during the backward, after the pass has
ended and with the model's own gates: the gradient would be the model's, or the recomputation
would save other tensors and fail. The pass notices the saved-tensor hooks and computes the
scores by the pass of the copies, as without checkpointing.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ctc_plugin import CTC
from ctc_plugin.testing import random_partition


class _Net(nn.Module):
    def __init__(self, checkpointed: bool, functional: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.GELU())
        self.head = nn.Linear(6, 3)
        self.checkpointed, self.functional = checkpointed, functional

    def _gates(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h - 0.1) * 2 + torch.tanh(h)  # no module: only the op hooks see it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        inner = self._gates if self.functional else self.block
        h = checkpoint(inner, h, use_reentrant=False) if self.checkpointed else inner(h)
        return self.head(h.mean(dim=(2, 3)))


@pytest.mark.parametrize("functional", [False, True])
@pytest.mark.parametrize("around", [nullcontext, torch.autograd.graph.save_on_cpu])
def test_checkpointed_blocks_give_the_scores_of_the_plain_model(functional, around):
    """Also inside the user's own saved-tensor hooks (``save_on_cpu()`` around the call)."""
    torch.manual_seed(0)
    plain = _Net(checkpointed=False, functional=functional).double().eval()
    checkpointed = _Net(checkpointed=True, functional=functional).double().eval()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = random_partition(8, 8, 4)
    expected = CTC(plain, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    with around():
        got = CTC(checkpointed, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_a_users_saved_tensor_hooks_around_the_call_keep_the_gradient_pass(monkeypatch):
    """``save_on_cpu()`` around the call moves saved tensors only: the one gradient still runs."""
    torch.manual_seed(0)
    model = _Net(checkpointed=False, functional=False).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = random_partition(8, 8, 4)
    expected = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    monkeypatch.setattr(CTC, "_run", lambda *args, **kwargs: pytest.fail("copies pass ran"))
    with torch.autograd.graph.save_on_cpu():
        got = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
