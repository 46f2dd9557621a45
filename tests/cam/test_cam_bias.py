"""FullGrad completeness of the bias maps, over random CNNs with BatchNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ctc_plugin.batchnorm import batch_norm_affine
from ctc_plugin.cam.bias import bias_map, fold_batchnorm
from ctc_plugin.cam.layers import StageTracer
from tests.cam.cam_models import randomise_batchnorm


class RandomCNN(nn.Module):
    """Blocks of conv [BN] ReLU [max-pool], a standalone BN, global average pool, linear."""

    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = spec
        channels, blocks = 3, nn.ModuleList()
        for width, use_bn, has_bias in spec["blocks"]:
            layers = [nn.Conv2d(channels, width, 3, padding=1, bias=has_bias)]
            if use_bn:
                layers.append(nn.BatchNorm2d(width))
            blocks.append(nn.Sequential(*layers))
            channels = width
        self.blocks = blocks
        self.post_bn = nn.BatchNorm2d(channels) if spec["post_bn"] else None
        self.fc = nn.Linear(channels, spec["classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, block in enumerate(self.blocks):
            x = block(x)
            x = torch.relu_(x) if self.spec["inplace"] else F.relu(x)
            if k in self.spec["pools"]:
                x = F.max_pool2d(x, 2)
        if self.post_bn is not None:
            x = self.post_bn(x)
        return self.fc(x.mean(dim=(2, 3)))


specs = st.fixed_dictionaries(
    {
        "blocks": st.lists(
            st.tuples(st.integers(2, 5), st.booleans(), st.booleans()), min_size=1, max_size=3
        ),
        "pools": st.sets(st.integers(0, 2), max_size=2),
        "post_bn": st.booleans(),
        "inplace": st.booleans(),
        "classes": st.integers(2, 4),
        "seed": st.integers(0, 10_000),
        "batch": st.integers(1, 3),
    }
)


@settings(max_examples=25, deadline=None)
@given(specs)
def test_bias_maps_plus_gradient_times_input_sum_to_the_logit(spec: dict) -> None:
    torch.manual_seed(spec["seed"])
    model = randomise_batchnorm(RandomCNN(spec), torch.Generator().manual_seed(spec["seed"]))
    model = model.double().eval()
    x = torch.rand(spec["batch"], 3, 8, 8, dtype=torch.float64, requires_grad=True)
    target = torch.randint(spec["classes"], (spec["batch"],))

    bias_terms: list[torch.Tensor] = []

    def on_grad(stage, grad):
        relu_output = stage.value() if stage.relu else None
        bias_terms.append(bias_map(grad, stage.bias, relu_output).sum(dim=(1, 2)))

    tracer = StageTracer(on_grad, discover=True, fold_bias=True)
    with tracer:
        out = model(x)
    tracer.finish()
    score = out.gather(1, target[:, None]).squeeze(1)
    (grad_x,) = torch.autograd.grad(score.sum(), x)
    expected_stages = len(spec["blocks"]) + int(spec["post_bn"])
    assert len(tracer.stages) == expected_stages
    assert len(bias_terms) == expected_stages
    total = (grad_x * x).sum(dim=(1, 2, 3)) + sum(bias_terms) + model.fc.bias[target]
    torch.testing.assert_close(total, score.detach(), atol=1e-9, rtol=1e-9)


def test_folded_bias_reproduces_conv_then_batchnorm() -> None:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    randomise_batchnorm(bn, torch.Generator().manual_seed(1)).eval()
    scale, shift = batch_norm_affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    folded = nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale[:, None, None, None])
        folded.bias.copy_(fold_batchnorm(conv.bias, scale, shift))
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(folded(x), bn(conv(x)), atol=1e-5, rtol=1e-5)
