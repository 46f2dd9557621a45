"""Stage maps are computed in float32 at least, also under ``torch.autocast``.

The gradient hooks run with the caller's autocast state: under ``torch.autocast`` (the usual
way to run a model in half precision) the products of the map (``einsum``, ``bmm``) would be
cast back down to bfloat16 / float16 after the promotion; ``_Run.on_grad`` turns autocast off.
"""

from __future__ import annotations

import torch

from ctc_plugin import IntegrativeCAM

from .cam_models import tiny_cnn
from .test_integrative_cam_user_models import SIZE, _gradcampp, images


def _autocast_cam_and_its_grad_campp() -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's map under CPU bfloat16 autocast, and Grad-CAM++ of the same activations."""
    model = tiny_cnn(inplace=False)
    layer, x = model.features[6], images()
    outputs: list[torch.Tensor] = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = IntegrativeCAM(model, layers=[layer], bias=False).attribute(x, target=1)
        handle = layer.register_forward_hook(lambda m, i, o: outputs.append(o))
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(leaf)[:, 1].sum(), outputs)
        handle.remove()
    assert outputs[0].dtype == torch.bfloat16  # the stage really is in bfloat16
    return ours, _gradcampp(outputs[0].detach(), grad, SIZE)


def test_autocast_layer_map_is_grad_campp_of_its_own_activations() -> None:
    """As for a bfloat16 model (``test_bfloat16_layer_map_is_grad_campp_of_its_own_activations``,
    0.002 there): given the autocast pass's own activations and gradients, the map is their
    Grad-CAM++ to 0.01. Today 0.037: the map's products ran in bfloat16 under autocast."""
    ours, expected = _autocast_cam_and_its_grad_campp()
    assert (ours.double() - expected).abs().max() < 0.01
