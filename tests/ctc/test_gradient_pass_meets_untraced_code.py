"""``"none"``'s gradient pass refuses what the pass of the copies refuses: untraced code.

TorchScript inside the model computes from the copies where the pass cannot see it. The pass of
the copies finds its result differing between an example's copies and raises
`UntracedOutputError`; the gradient pass, with one copy per example, has no rows to compare and
differentiated through the scripted code instead (other scores than the plain Python model's).
It now notices that such a constant grows from its inputs and gives way to the pass of the
copies. Constants computed from the parameters alone (a weight parametrization) stay constants.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from ctc_plugin import CTC, UntracedOutputError
from ctc_plugin.ctc.rules import grows_from
from ctc_plugin.testing import random_partition


@torch.jit.script
def _scripted_swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h + _scripted_swish(h)
        return self.head(torch.relu(h).mean(dim=(2, 3)))


@pytest.mark.parametrize("mode", ["none", "proportional", "reference"])
def test_torchscript_inside_the_model_is_refused_in_every_mode(mode):
    torch.manual_seed(0)
    model = _Residual().double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(UntracedOutputError, match="TorchScript"):
        CTC(model, bias_sharing=mode).attribute(x, 1, feature_mask=random_partition(8, 8, 4))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_parametrized_weight_is_a_constant_of_the_gradient_pass():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    plain = plain.double().eval()
    normed = parametrizations.weight_norm(nn.Conv2d(3, 4, 3).double())
    with torch.no_grad():
        plain[0].weight.copy_(normed.weight)
        plain[0].bias.copy_(normed.bias)
    model = nn.Sequential(normed, *plain[1:]).eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = random_partition(8, 8, 4)
    got = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    expected = CTC(plain, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_grows_from_follows_the_graph_to_the_leaves_only():
    leaf = torch.rand(3, requires_grad=True)
    other = torch.rand(3, requires_grad=True)
    assert grows_from((leaf * 2).exp().sum(), (leaf,))
    assert not grows_from((other * 2).sum(), (leaf,))
    assert not grows_from((leaf * 2).sum(), ())
