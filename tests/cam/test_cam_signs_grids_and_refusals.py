"""Integrative CAM: signs of a decreasing phi, refusals, and token grids."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from torch import nn

from ctc_plugin import IntegrativeCAM, TrainingModeError
from ctc_plugin.cam import grad_cam_layer, tokens_to_grid
from tests.cam.cam_models import tiny_cnn

SIZE = (16, 20)


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def _minus_s(s: torch.Tensor) -> torch.Tensor:
    return -s


@pytest.mark.parametrize("bias", [False, True])
def test_a_decreasing_phi_without_curvature_explains_its_value(bias: bool) -> None:
    """``phi(S) = -S`` is Grad-CAM of ``-S``: weights, layer scores and bias map all signed."""
    model = tiny_cnn()
    x = images()
    ours, ours_layers = IntegrativeCAM(model, phi=_minus_s, bias=bias).attribute(
        x, target=1, return_layer_maps=True
    )
    theirs, their_layers = IntegrativeCAM(lambda z: -model(z), phi="identity", bias=bias).attribute(
        x, target=1, return_layer_maps=True
    )
    torch.testing.assert_close(ours_layers.weights, their_layers.weights)
    torch.testing.assert_close(ours_layers.maps, their_layers.maps)
    torch.testing.assert_close(ours, theirs)


def test_a_batch_mixing_signs_gives_each_example_its_own() -> None:
    """A phi increasing at one score and decreasing at another, per example (Grad-CAM fallback)."""
    model = tiny_cnn()
    x = images(2)
    scores = model(x)[:, 1].detach()
    turn = float(scores.mean())  # phi has slope +1 above turn and -1 below, no curvature
    flat = IntegrativeCAM(
        model,
        phi=lambda s: torch.where(s > turn, s, -s),
        bias=False,
    ).attribute(x, target=1)
    up = IntegrativeCAM(model, phi="identity", bias=False).attribute(x, target=1)
    down = IntegrativeCAM(lambda z: -model(z), phi="identity", bias=False).attribute(x, target=1)
    for i in range(2):
        expected = up[i] if scores[i] > turn else down[i]
        torch.testing.assert_close(flat[i], expected)


def test_a_nan_score_is_refused_naming_the_examples_not_phi() -> None:
    model = tiny_cnn()
    with torch.no_grad():
        model.head[2].bias[1] = float("nan")
    with pytest.raises(ValueError, match=r"examples \[0, 1, 2\] are \[nan, nan, nan\].*not finite"):
        IntegrativeCAM(model).attribute(images(), target=1)


@pytest.mark.parametrize("bias", [False, True])
def test_a_forward_function_with_training_batchnorm_is_refused_before_it_runs(bias: bool) -> None:
    model = tiny_cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingModeError, match="training mode"):
        IntegrativeCAM(lambda z: model(z), bias=bias).attribute(images(), target=1)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_forward_function_with_training_dropout_is_refused() -> None:
    model = tiny_cnn()
    train = nn.Sequential(nn.Dropout(0.5)).train()
    with pytest.raises(TrainingModeError, match="Dropout.*training mode"):
        IntegrativeCAM(lambda z: model(train(z))).attribute(images(), target=1)

    def functional(p: float):
        return lambda z: model(nn.functional.dropout(z, p, training=True))

    with pytest.raises(TrainingModeError, match=r"dropout runs with training=True \(p=0.5\)"):
        IntegrativeCAM(functional(0.5)).attribute(images(), target=1)
    expected = IntegrativeCAM(model).attribute(images(), target=1)
    torch.testing.assert_close(  # drops nothing: not random, accepted
        IntegrativeCAM(functional(0.0)).attribute(images(), target=1), expected
    )


def test_batchnorm_without_running_statistics_needs_bias_false() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip
    with pytest.raises(TrainingModeError, match="no running statistics.*bias=False"):
        IntegrativeCAM(model).attribute(images(), target=1)
    one = images()[:1]  # the batch's statistics are the example's own
    assert IntegrativeCAM(model, bias=False).attribute(one, target=1).shape[-2:] == SIZE


def test_tokens_to_grid_takes_a_grid_that_is_not_square() -> None:
    grid = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    tokens = torch.cat([torch.full((2, 1, 3), -1.0), grid.flatten(2).transpose(1, 2)], dim=1)
    assert torch.equal(tokens_to_grid(tokens, grid=(2, 4)), grid)
    with pytest.raises(ValueError, match="does not fit 9 tokens"):
        tokens_to_grid(tokens, grid=(3, 4))


class PatchTokens(nn.Module):
    """4 x 4 patches, a class token, one torchvision ViT block, mean of the patch tokens."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.vision_transformer import EncoderBlock

        torch.manual_seed(0)
        self.patches = nn.Conv2d(3, 8, 4, stride=4)
        self.class_token = nn.Parameter(torch.randn(1, 1, 8))
        self.block = EncoderBlock(2, 8, 16, dropout=0.0, attention_dropout=0.0)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(len(x), -1, -1), tokens], dim=1)
        return self.head(self.block(tokens)[:, 1:].mean(dim=1))


def test_non_square_images_refuse_the_square_token_default() -> None:
    """8 tokens of a 2 x 4 grid plus a class token became a 3 x 3 grid of the wrong tokens."""
    model = PatchTokens().eval()
    x = torch.rand(2, 3, 8, 16)
    with pytest.raises(ValueError, match="8 x 16 pixels.*grid=\\(rows, columns\\)"):
        IntegrativeCAM(model).attribute(x, target=0)  # a known block type: tokens_to_grid
    with pytest.raises(ValueError, match="8 x 16 pixels"):
        IntegrativeCAM(model, [model.block], reshape_transform=tokens_to_grid).attribute(x, 0)


def test_a_partial_tokens_to_grid_explains_a_non_square_grid() -> None:
    model = PatchTokens().eval()
    x = torch.rand(2, 3, 8, 16)
    reshape = functools.partial(tokens_to_grid, grid=(2, 4))
    ours = IntegrativeCAM(model, phi="identity", reshape_transform=reshape).attribute(x, 0)

    def by_hand(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 1:].reshape(len(tokens), 2, 4, -1).permute(0, 3, 1, 2)

    cam = IntegrativeCAM(model, [model.block], phi="identity", reshape_transform=by_hand)
    theirs = cam.attribute(x, target=0)
    assert ours.shape == (2, 1, 8, 16) and ours.max() > 0
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(
    ("told", "why"),
    [((4, 2), "as many patches"), ((1, 8), "as many patches"), ((2, 3), "8 patches")],
    ids=["transposed", "other-factors", "too-few-cells"],
)
@pytest.mark.parametrize("kind", ["partial", "PatchTokens"])
def test_a_told_grid_that_contradicts_the_patch_embedding_is_refused(told, why, kind) -> None:
    """Each put the patches of a 2 x 4 grid in the wrong cells of every map, without an error."""
    from ctc_plugin.cam.reshapes import PatchTokens as Tokens

    model = PatchTokens().eval()
    reshape = (
        functools.partial(tokens_to_grid, grid=told)
        if kind == "partial"
        else Tokens(prefix=9 - told[0] * told[1], grid=told)
    )
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"told a {told[0]} x {told[1]} .*2 x 4 grid of {why}"):
        IntegrativeCAM(model, reshape_transform=reshape).attribute(torch.rand(2, 3, 8, 16), 0)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert not any(module._forward_hooks for module in model.modules())


def test_a_told_grid_with_more_cells_than_the_last_convolution_is_left_alone() -> None:
    """An attention's spatial-reduction convolution runs after the patch embedding (Twins)."""

    class Reduced(PatchTokens):
        def __init__(self) -> None:
            super().__init__()
            self.reduce = nn.Conv2d(8, 8, 2, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            grid = self.patches(x)
            tokens = grid.flatten(2).transpose(1, 2)
            tokens = torch.cat([self.class_token.expand(len(x), -1, -1), tokens], dim=1)
            reduced = self.reduce(grid).mean()  # the last convolution before the block
            tokens = self.block(tokens) + reduced
            return self.head(tokens[:, 1:].mean(dim=1))

    model = Reduced().eval()
    reshape = functools.partial(tokens_to_grid, grid=(2, 4))
    cam = IntegrativeCAM(model, [model.block], phi="identity", reshape_transform=reshape)
    assert cam.attribute(torch.rand(2, 3, 8, 16), target=0).shape == (2, 1, 8, 16)


def test_tuple_outputs_are_refused_with_a_message_that_fits() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.conv(x).relu()
            return y, y.mean()

    pair = Pair()
    model = nn.Sequential()
    model.forward = lambda x: pair(x)[0].mean(dim=(2, 3))  # type: ignore[method-assign]
    cam = IntegrativeCAM(model.forward, layers=[pair], reshape_transform=lambda o: o[0])
    with pytest.raises(ValueError, match="returned a tuple, not a tensor.*submodule"):
        cam.attribute(images(), target=0)


def test_grad_cam_layer_of_a_class_token_vit_has_a_gradient() -> None:
    """torchvision's ViT reads its class token only: its last block's patch tokens get no
    gradient, so Grad-CAM of that block is zero; its ``ln_1`` (the tutorial's norm1) is not."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=5,
    ).eval()  # fmt: skip
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    layer, reshape = grad_cam_layer(model)
    assert layer is model.encoder.layers[-1].ln_1 and reshape is tokens_to_grid
    x = torch.rand(2, 3, 32, 32)
    with GradCAM(model, [layer], reshape_transform=reshape) as cam:
        maps = cam(x, targets=[ClassifierOutputTarget(0)] * 2)
    assert maps.max() > 0.5


def test_a_told_grid_of_no_cells_gets_the_reshapes_own_error() -> None:
    """grid=(0, 4) was taken for a grid and refused as putting patches in the wrong places."""
    model = PatchTokens().eval()
    reshape = functools.partial(tokens_to_grid, grid=(0, 4))
    with pytest.raises(ValueError, match=r"a patch grid of 0 x 4 does not fit"):
        IntegrativeCAM(model, reshape_transform=reshape).attribute(torch.rand(2, 3, 8, 16), 0)


def _small_vit() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=5,
    ).eval()  # fmt: skip


@pytest.mark.parametrize("grid", [None, (4, 4)], ids=["grid-read", "grid-told"])
def test_a_wrong_prefix_is_told_the_prefix_not_the_grid(grid) -> None:
    """17 tokens of a 4 x 4 grid and a class token, read with prefix=0: the advice was to pass
    a grid, which cannot be right (the grid given then failed otherwise)."""
    from ctc_plugin.cam.reshapes import PatchTokens as Tokens

    reshape = Tokens(prefix=0, grid=grid)
    with pytest.raises(ValueError, match=r"PatchTokens\(prefix=1"):
        IntegrativeCAM(_small_vit(), reshape_transform=reshape).attribute(
            torch.rand(1, 3, 32, 32), target=0
        )


def test_a_token_reshape_on_swin_blocks_is_told_the_channels_last_one() -> None:
    import torchvision

    torch.manual_seed(0)
    swin = torchvision.models.swin_t(num_classes=5).eval()
    with pytest.raises(ValueError, match=r"channels-last .*channels_last_to_grid"):
        IntegrativeCAM(swin, reshape_transform=tokens_to_grid).attribute(
            torch.rand(1, 3, 64, 64), target=0
        )
