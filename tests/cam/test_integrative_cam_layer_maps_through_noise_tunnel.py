"""``return_layer_maps=True`` through Captum's NoiseTunnel is refused with what to do instead.

NoiseTunnel averages tensors; the ``(maps, LayerMaps)`` pair failed inside it with
``'LayerMaps' object has no attribute 'shape'``. CTC refuses its ``return_feature_scores=True``
there the same way.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import NoiseTunnel

from ctc_plugin import IntegrativeCAM
from tests.cam.cam_models import tiny_cnn


def test_layer_maps_are_refused_inside_noise_tunnel_and_plain_maps_pass() -> None:
    model = tiny_cnn()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    tunnel = NoiseTunnel(IntegrativeCAM(model))
    with pytest.raises(
        TypeError, match=r"return_layer_maps=True cannot pass through .*NoiseTunnel"
    ):
        tunnel.attribute(x, nt_type="smoothgrad", nt_samples=2, target=1, return_layer_maps=True)
    maps = tunnel.attribute(x, nt_type="smoothgrad", nt_samples=2, target=1)
    assert maps.shape == (2, 1, 16, 16)
    _, layers = IntegrativeCAM(model).attribute(x, target=1, return_layer_maps=True)
    assert layers.maps.shape[:2] == (2, len(layers.names))
