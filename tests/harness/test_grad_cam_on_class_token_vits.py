"""The benchmark's pytorch-grad-cam methods on a ViT that classifies its class token alone.

The patch tokens its last block outputs reach no score, so a Grad-CAM of that block is zero
everywhere; the methods take the layer ``grad_cam_layer`` names (the last block's first norm, as
pytorch-grad-cam's ViT tutorial does), whose patch tokens do reach the class token.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.harness.methods import _grad_cam
from ctc_plugin.testing import randomise_statistics_and_biases

timm = pytest.importorskip("timm")


@pytest.mark.parametrize("method", ["GradCAM", "GradCAMPlusPlus"])
def test_a_class_token_vit_gets_maps_that_are_not_all_zero(method: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, global_pool="token"
    )
    model = randomise_statistics_and_biases(model, seed=1, noise=0.05).eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    maps = _grad_cam(method)(model, images, torch.tensor([1, 3]), None)
    assert maps.shape == (2, 1, 32, 32)
    assert maps.abs().amax() > 0  # the last block's map is zero for every image


def test_a_vit_of_dynamic_image_size_on_a_non_square_image_gets_its_patch_grid() -> None:
    """A 32 x 48 image is a 2 x 3 grid: the square guess was refused with advice to pass a
    grid, which the benchmark's methods and Quantus's explain_func cannot take."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from ctc_plugin.cam.reshapes import PatchTokens
    from ctc_plugin.cam.transformers import grad_cam_layer

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, dynamic_img_size=True
    )
    model = randomise_statistics_and_biases(model, seed=1, noise=0.05).eval()
    images = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    maps = _grad_cam("GradCAM")(model, images, torch.tensor([1, 3]), None)
    layer, _ = grad_cam_layer(model, images)
    cam = pytorch_grad_cam.GradCAM(
        model=model, target_layers=[layer], reshape_transform=PatchTokens(1, grid=(2, 3))
    )
    expected = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in (1, 3)])
    cam.activations_and_grads.release()
    torch.testing.assert_close(maps[:, 0], torch.from_numpy(expected))


def test_finding_the_layer_leaves_a_training_model_s_statistics_alone() -> None:
    """grad_cam_layer runs the example: in training mode its BatchNorms took its statistics."""
    import torchvision

    from ctc_plugin.cam.transformers import grad_cam_layer

    model = torchvision.models.resnet18(num_classes=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grad_cam_layer(model, torch.rand(2, 3, 32, 32))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_an_integrative_cam_that_is_zero_everywhere_says_so() -> None:
    """On the layer grad_cam_layer names, the default phi's Grad-CAM++ weights of the signed
    tokens cancelled: an all-zero map came back without a word."""
    import warnings

    from ctc_plugin.cam import EmptyMapWarning, IntegrativeCAM
    from ctc_plugin.cam.transformers import grad_cam_layer

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32)
    model = randomise_statistics_and_biases(model, seed=1, noise=0.05).eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    layer, reshape = grad_cam_layer(model, images)
    cam = IntegrativeCAM(model, layers=[layer], reshape_transform=reshape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = cam.attribute(images, target=0)
    empty = [i for i in range(2) if maps[i].amax() == 0]
    warned = [w for w in caught if issubclass(w.category, EmptyMapWarning)]
    assert empty == [1] and len(warned) == 1  # this seed's second image: all zero
    assert "example(s) [1]" in str(warned[0].message)
    assert "phi='identity'" in str(warned[0].message)
    identity = IntegrativeCAM(model, layers=[layer], reshape_transform=reshape, phi="identity")
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyMapWarning)
        assert identity.attribute(images, target=0).amax() > 0
