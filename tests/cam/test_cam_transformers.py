"""Integrative CAM on vision transformers: the blocks' token maps as stages."""

from __future__ import annotations

import pytest
import torch
import torchvision

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam import (
    BLOCK_RESHAPES,
    channels_last_to_grid,
    grad_cam_layer,
    tokens_to_grid,
)
from ctc_plugin.cam.fusion import minmax, upsample
from ctc_plugin.testing import RandomTransformer, TransformerSpec


def _vit_b_16() -> torch.nn.Module:
    model = torchvision.models.vit_b_16(image_size=32)
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision starts it at zero: no gradient
    return model


MODELS = {
    "vit_b_16": (_vit_b_16, 32, 12),
    "swin_t": (torchvision.models.swin_t, 64, 12),
}


@pytest.mark.parametrize("name", MODELS)
def test_the_stages_of_a_transformer_are_its_blocks(name):
    make, size, blocks = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.rand(2, 3, size, size)
    maps, layers = IntegrativeCAM(model).attribute(x, target=3, return_layer_maps=True)
    assert maps.shape == (2, 1, size, size) and torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    assert len(layers.names) == blocks and all(step == ("layer",) for step in layers.steps)
    assert (layers.weights.sum(1) - 1).abs().max() < 1e-5
    assert maps.amax(dim=(1, 2, 3)).min() > 0.5  # real maps, not the zero-gradient fallback


def test_tokens_to_grid_drops_the_leading_tokens_and_keeps_the_grid_order():
    grid = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    tokens = grid.flatten(2).transpose(1, 2)  # (2, 16, 3), row-major patches
    with_class = torch.cat([torch.full((2, 1, 3), -1.0), tokens], dim=1)
    assert torch.equal(tokens_to_grid(with_class), grid)
    assert torch.equal(tokens_to_grid(tokens), grid)
    assert torch.equal(channels_last_to_grid(grid.permute(0, 2, 3, 1)), grid)
    with pytest.raises(ValueError, match="token maps"):
        tokens_to_grid(grid)


def test_a_transformer_of_unknown_blocks_is_refused_not_explained_by_one_stage():
    model = RandomTransformer(TransformerSpec(), seed=1)
    with pytest.raises(ValueError, match="computes attention.*reshape_transform"):
        IntegrativeCAM(model).attribute(torch.rand(1, 3, 8, 8), target=0)


def test_explicit_layers_with_a_reshape_equal_a_registered_block_type(monkeypatch):
    model = RandomTransformer(TransformerSpec(depth=2), seed=1)
    x = torch.rand(2, 3, 8, 8)
    explicit = IntegrativeCAM(
        model, layers=list(model.blocks), reshape_transform=tokens_to_grid
    ).attribute(x, target=1)
    monkeypatch.setitem(BLOCK_RESHAPES, type(model.blocks[0]), tokens_to_grid)
    registered = IntegrativeCAM(model).attribute(x, target=1)
    torch.testing.assert_close(explicit, registered)


def test_token_maps_without_a_reshape_get_a_clear_error():
    model = RandomTransformer(TransformerSpec(), seed=1)
    with pytest.raises(ValueError, match="reshape_transform"):
        IntegrativeCAM(model, layers=[model.blocks[0]]).attribute(torch.rand(1, 3, 8, 8), target=0)


def test_a_layer_map_is_grad_cam_of_the_reshaped_token_map():
    """One block, identity phi, no bias: the Grad-CAM map of the block's reshaped tokens."""
    torch.manual_seed(0)
    model = RandomTransformer(TransformerSpec(depth=1, class_token=False), seed=0).double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    cam = IntegrativeCAM(
        model,
        layers=[model.blocks[0]],
        phi="identity",
        bias=False,
        reshape_transform=tokens_to_grid,
    )
    ours = cam.attribute(x, target=3)
    captured = {}
    handle = model.blocks[0].register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    score = model(x)[0, 3]
    handle.remove()
    (gradient,) = torch.autograd.grad(score, captured["out"])
    act, grad = tokens_to_grid(captured["out"]).detach(), tokens_to_grid(gradient)
    weights = grad.mean(dim=(2, 3), keepdim=True)  # Grad-CAM's weights (identity phi)
    expected = minmax(upsample(minmax(torch.relu((weights * act).sum(1, keepdim=True))), (8, 8)))
    assert expected.max() > 0  # the test compares real maps
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_integrative_grad_cam_takes_a_reshape_transform():
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from ctc_plugin.adapters.gradcam import IntegrativeGradCAM

    model = RandomTransformer(TransformerSpec(depth=2), seed=1)
    x = torch.rand(2, 3, 8, 8)
    targets = [ClassifierOutputTarget(1)] * 2
    with IntegrativeGradCAM(
        model, target_layers=list(model.blocks), reshape_transform=tokens_to_grid
    ) as cam:
        maps = cam(input_tensor=x, targets=targets)
    expected = IntegrativeCAM(
        model, layers=list(model.blocks), reshape_transform=tokens_to_grid
    ).attribute(x, target=[1, 1])
    torch.testing.assert_close(torch.from_numpy(maps), expected[:, 0].float())


def test_grad_cam_layer_is_a_transformers_last_block_or_a_cnns_last_feature_map():
    """For a CNN it returned the last Conv2d registered: the zoo ResNet's shortcut projection
    (layer4.downsample.0), one branch of Inception's last block, a 32-channel conv of
    DenseNet's; Grad-CAM's pointing game on the zoo Inception fell from 0.81 to 0.40."""
    import torchvision

    from ctc_plugin import zoo

    vit = zoo.build("vit", 6)
    layer, reshape = grad_cam_layer(vit)
    assert layer is vit.blocks[-1] and reshape is tokens_to_grid
    images = torch.rand(2, 3, 96, 96)
    cnn = zoo.build("resnet", 6).eval()
    assert grad_cam_layer(cnn, images) == (cnn.layer4, None)
    inception = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    assert grad_cam_layer(inception.eval(), torch.rand(1, 3, 160, 160))[0] is inception.Mixed_7c
    densenet = torchvision.models.densenet121(weights=None).eval()
    assert grad_cam_layer(densenet, images)[0] is densenet.features
    with pytest.raises(ValueError, match=r"no transformer block of a known type: .*example=images"):
        grad_cam_layer(cnn)
    with pytest.raises(ValueError, match="no Conv2d"):
        grad_cam_layer(torch.nn.Linear(2, 2))


def test_grad_cam_layer_of_a_wrapped_class_token_vit_is_its_ln_1():
    """A ViT behind a normalisation (``nn.Sequential``) got its last block: a zero gradient."""
    from torchvision.models import VisionTransformer

    from ctc_plugin.cam.transformers import grad_cam_layer

    vit = VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    wrapped = torch.nn.Sequential(torch.nn.Identity(), vit)
    layer, _ = grad_cam_layer(wrapped)
    assert layer is vit.encoder.layers[-1].ln_1
