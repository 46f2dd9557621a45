"""Integrative CAM against its documented formula, written out in plain torch.

For each convolutional stage ``l`` (convolution, BatchNorm folded in, ReLU) with output ``A``,
pre-activation ``Z`` and ``g = dS/dA`` ("The method as implemented",
docs/integrative-cam-decisions.md):

    L_l = ReLU(c_l sum_k w_k A_k + sign(phi'(S)) B_l),   B_l = sum_c b_c dS/dZ_c  (b: folded bias)
    w_k = sum_ij alpha_ij relu(sign(phi') g_ij),
    alpha_ij = phi'' g_ij^2 / (2 phi'' g_ij^2 + phi''' g_ij^3 sum_ab A_ab)   (+ 1e-6, as Grad-CAM++)
    c_l = |sum(g * A) - sum(B_l)| / |sum(sum_k w_k A_k)|
    M   = minmax( sum_l s_l Up(minmax(L_l)) / sum_l s_l ),   s_l = mean(ReLU(sign(phi') g * A))
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin import IntegrativeCAM


class _ThreeStages(nn.Module):
    """conv (biased) - ReLU - max pool - conv (bias-free) - BatchNorm - ReLU - conv (biased,
    no ReLU: its output ``A`` is its pre-activation and has negative values) - pool - linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(5)
        self.conv3 = nn.Conv2d(5, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv1.bias.uniform_(-0.5, 0.5)
            self.conv3.bias.uniform_(-0.5, 0.5)
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)

    def stages(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        a1 = F.relu(self.conv1(x))
        a2 = F.relu(self.bn(self.conv2(F.max_pool2d(a1, 2))))
        a3 = self.conv3(a2)
        return [a1, a2, a3], self.fc(a3.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)[1]

    def folded_biases(self) -> list[torch.Tensor]:
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        return [self.conv1.bias, self.bn.bias - self.bn.running_mean * scale, self.conv3.bias]


def _minmax(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(1)
    shifted = flat - flat.min(1, keepdim=True).values
    return (shifted / (1e-7 + shifted.max(1, keepdim=True).values)).view_as(m)


def _by_hand(
    model: _ThreeStages, x: torch.Tensor, target: list[int], bias: bool, decreasing: bool = False
):
    """Per stage the upsampled map and the weight s_l / sum s; and the fused map.

    ``phi = exp(S)``, or ``exp(-S)`` with ``decreasing``: then ``sign(phi') = -1`` and
    ``phi'''/phi'' = -1``, so ``alpha = g^2 / (2 g^2 - g^3 sum A)``, the positive evidence is
    ``relu(-g)``, the bias map enters with sign -1 and ``s_l = mean(ReLU(-g * A))``.
    """
    sign = -1.0 if decreasing else 1.0
    leaf = x.clone().requires_grad_(True)
    acts, logits = model.stages(leaf)
    score = logits.gather(1, torch.tensor(target).view(-1, 1)).sum()
    grads = torch.autograd.grad(score, acts)
    maps, scores = [], []
    with torch.no_grad():
        for a, g, b, relu in zip(acts, grads, model.folded_biases(), (True, True, False)):
            g2, g3 = g**2, g**3
            alpha = g2 / (2 * g2 + sign * g3 * a.sum(dim=(2, 3), keepdim=True) + 1e-6)
            w = (alpha * torch.relu(sign * g)).sum(dim=(2, 3))  # (N, C)
            channel = torch.einsum("nc,nchw->nhw", w, a)
            cam = channel
            if bias:
                dz = g * (a > 0) if relu else g  # back through the ReLU
                b_map = torch.einsum("c,nchw->nhw", b, dz)
                rest = (g * a).sum(dim=(1, 2, 3)) - b_map.sum(dim=(1, 2))
                c = rest.abs() / channel.sum(dim=(1, 2)).abs()
                cam = c.view(-1, 1, 1) * channel + sign * b_map
            layer = _minmax(torch.relu(cam).unsqueeze(1))
            maps.append(F.interpolate(layer, size=x.shape[-2:], mode="bilinear"))
            scores.append(torch.relu(sign * g * a).mean(dim=(1, 2, 3)))
        s = torch.stack(scores, 1)  # (N, L)
        weighted = sum(s[:, k, None, None, None] * maps[k] for k in range(len(maps)))
        fused = _minmax(weighted / s.sum(1).view(-1, 1, 1, 1))
    return torch.cat(maps, 1), s / s.sum(1, keepdim=True), fused


def _minus_exp(s: torch.Tensor) -> torch.Tensor:
    return torch.exp(-s)


def _case():
    model = _ThreeStages().double().eval()
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    return model, x, [0, 1, 2]


@pytest.mark.parametrize("decreasing", [False, True], ids=["exp", "exp(-S)"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
def test_maps_weights_and_fusion_follow_the_formula(bias, decreasing):
    model, x, target = _case()
    expected_maps, expected_weights, expected_fused = _by_hand(model, x, target, bias, decreasing)
    phi = _minus_exp if decreasing else "exp"
    fused, layers = IntegrativeCAM(model, phi=phi, bias=bias).attribute(
        x, target=target, return_layer_maps=True
    )
    assert len(layers.names) == 3
    torch.testing.assert_close(layers.weights, expected_weights, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(layers.maps, expected_maps, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(fused, expected_fused, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("decreasing", [False, True], ids=["exp", "exp(-S)"])
def test_the_bias_map_changes_every_stage_in_this_example(decreasing):
    """Else the test above could not tell a wrong bias map from none."""
    model, x, target = _case()
    with_bias, _, _ = _by_hand(model, x, target, True, decreasing)
    without, _, _ = _by_hand(model, x, target, False, decreasing)
    for stage in range(3):
        assert float((with_bias[:, stage] - without[:, stage]).abs().max()) > 1e-2
