"""The channels-last guess leaves a convolution's own (N, C, H, W) output alone.

The guess reads the shape: dimensions 1 and 2 in exactly the image's aspect, 2 and 3 not. A
network of valid convolutions and ceil-mode pooling rounds its grid off the image's aspect, and
then a channel count in that aspect was enough: torchvision's SqueezeNet 1.0 on a 200 x 300
image gives ``features.5.squeeze`` a (N, 32, 48, 73) output. A map whose last two dimensions
are the grid of a convolution's output is (N, C, H, W).
"""

from __future__ import annotations

import torch
import torchvision

from ctc_plugin import IntegrativeCAM


def test_squeezenet_squeeze_layer_of_a_two_by_three_photograph_is_explained() -> None:
    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_0(weights=None, num_classes=5).eval()
    layer = model.features[5].squeeze
    x = torch.rand(1, 3, 200, 300, generator=torch.Generator().manual_seed(0))
    maps = IntegrativeCAM(model, layers=[layer]).attribute(x, target=1)
    identity = IntegrativeCAM(model, layers=[layer], reshape_transform=lambda t: t)
    torch.testing.assert_close(maps, identity.attribute(x, target=1))
