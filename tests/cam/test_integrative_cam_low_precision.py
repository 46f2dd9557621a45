"""Integrative CAM of float16 and bfloat16 models against the float32 maps of the same rounding.

The model runs in its own dtype; the method's arithmetic (channel weights, alpha, bias map,
calibration, fusion) runs in float32 at least (``_Run.on_grad``). What is left between a
low-precision model's maps and the float32 maps of its rounded weights (``model.to(dtype)
.float()``, same rounded images) is the rounding of the model's own forward and backward pass.

The model here has no kinks (SiLU, average pooling): in a ReLU or max-pooling model that
rounding moves a few units across a ReLU's 0 or a pooling window's maximum, which changes the
gradient at those pixels by its whole value, and a stage map read from the gradient pixel by
pixel (the bias map) or one that is a small rest of large signed terms then differs by up to 1
(``benchmarks/bench_integrative_cam_precision.py``; docs/integrative-cam-decisions.md).

Tolerances, measured on this CPU (x86, torch 2.14) for seed 0, largest over bias on and off:

- float16: stage maps 0.004, fused 0.002; with the method's arithmetic in float16 (the
  ``torch.promote_types`` calls made the identity) 0.28-1.0 and 0.2-0.6, as the alpha's
  ``g**2, g**3`` underflow. 0.02 is five times the measured, far below the failure.
- bfloat16: stage maps 0.029, fused 0.018, the model's own rounding (8 bits): 0.06 leaves
  twice that for other CPUs' bfloat16 kernels. bfloat16 has float32's range, so nothing
  underflows: this case bounds the drift but does not tell float32 arithmetic from bfloat16's
  (those gave 0.067 / 0.043 without the bias term, 0.017 / 0.013 with it).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import IntegrativeCAM

from .cam_models import tiny_cnn

TOLERANCE = {torch.float16: 0.02, torch.bfloat16: 0.06}


def smooth_cnn() -> nn.Module:
    """The tests' tiny CNN with SiLU for its ReLUs and average for max pooling: no kinks."""
    model = tiny_cnn(seed=0)
    model.features[3] = nn.AvgPool2d(2)
    for index in (2, 6, 8):
        model.features[index] = nn.SiLU()
    return model


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_maps_are_the_float32_maps_of_the_rounded_model(
    dtype: torch.dtype, bias: bool
) -> None:
    x = torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(0)).to(dtype)
    low = IntegrativeCAM(smooth_cnn().to(dtype), bias=bias)
    fused, stages = low.attribute(x, target=1, return_layer_maps=True)
    reference = IntegrativeCAM(smooth_cnn().to(dtype).float(), bias=bias)
    ref_fused, ref_stages = reference.attribute(x.float(), target=1, return_layer_maps=True)
    assert fused.dtype == dtype and stages.maps.dtype == dtype
    assert stages.names == ref_stages.names and len(stages.names) == 3
    assert (stages.maps.float() - ref_stages.maps).abs().max() < TOLERANCE[dtype]
    assert (fused.float() - ref_fused).abs().max() < TOLERANCE[dtype]
