"""Integrative CAM on timm's TNT, MViTv2 and Hiera: blocks that return tuples or unrolled tokens.

TNT's blocks return (pixel tokens, patch tokens), MViTv2's (tokens, grid size), and Hiera's
hold their tokens in mask-unit order. Each stage's activation and gradient, as Integrative CAM
receives them, are checked against maps made without its reshapes: timm's own
``forward_intermediates`` (TNT: every block; MViTv2: each stage's last block; Hiera: every block
through timm's ``Reroll``), and gradients taken by autograd from the blocks' outputs and put on
the grid by hand (TNT, MViTv2: the grid the model or the block says) or by timm's ``Reroll``.
The sizes include grids that are not square, and a TNT whose pixel grid inside a patch has as
many cells as its patch grid (2 x 8 patches of 4 x 4 pixels), which the last convolution's grid
would have read as a 4 x 4 patch grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam import grad_cam_layer, tokens_to_grid, transformer_stages
from ctc_plugin.cam.integrative import UnknownBlocksError
from ctc_plugin.cam.reshapes import PatchTokens, TupleOutput, UnrolledTokens, channels_last_to_grid
from ctc_plugin.cam.transformers import refused_blocks
from ctc_plugin.testing import randomise_statistics_and_biases

from .stage_maps import received_stage_maps

timm = pytest.importorskip("timm")


def _ready(model: nn.Module) -> nn.Module:
    """Random weights that reach the score (timm starts heads and layer scales near zero)."""
    randomise_statistics_and_biases(model, seed=1, noise=0.05)
    return model.eval().double()


def _tnt(size: tuple[int, int] = (32, 32), patch: int = 8, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    model = timm.models.tnt.TNT(
        img_size=size, patch_size=patch, embed_dim=16, inner_dim=8, depth=2, num_heads_inner=1,
        num_heads_outer=2, num_classes=3, **kwargs,
    )  # fmt: skip
    return _ready(model)


def _mvit(size: tuple[int, int] = (32, 32), cls: bool = False, depths=(1, 1)) -> nn.Module:
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

    torch.manual_seed(0)
    # relative positions assume a square grid: none for the others
    rel_pos = "spatial" if size[0] == size[1] else ""
    cfg = MultiScaleVitCfg(
        depths=depths, embed_dim=8, num_heads=1, use_cls_token=cls, rel_pos_type=rel_pos
    )
    return _ready(MultiScaleVit(cfg, img_size=size, num_classes=3))


def _hiera(size: tuple[int, int] = (64, 64), q_pool: int = 3) -> nn.Module:
    torch.manual_seed(0)
    model = timm.models.hiera.Hiera(
        img_size=size, embed_dim=8, num_heads=1, stages=(1, 1, 1, 1), q_pool=q_pool,
        num_classes=3,
    )  # fmt: skip
    return _ready(model)


@dataclass(frozen=True)
class Case:
    """A tiny model, its input size, and how to put a block's tensor on its grid by hand.

    Attributes:
        make: Builds the model.
        size: The input size.
        pick: The tensor to explain in a block's output.
        by_hand: ``(model, block index, block output, tensor) -> (N, C, H, W)``.
        timm_indices: The blocks whose maps ``forward_intermediates`` gives, in order.
        intermediates: Keyword arguments of ``forward_intermediates``.
    """

    make: Callable[[], nn.Module]
    size: tuple[int, int]
    pick: Callable[[object], Tensor]
    by_hand: Callable[[nn.Module, int, object, Tensor], Tensor]
    timm_indices: tuple[int, ...]
    intermediates: tuple[tuple[str, object], ...] = ()


def _tnt_by_hand(model: nn.Module, _index: int, _output: object, tokens: Tensor) -> Tensor:
    """The patch tokens after the class token, on the grid timm computes from the image size."""
    rows, columns = model.pixel_embed.dynamic_feat_size(model.pixel_embed.img_size)
    return tokens[:, 1:].reshape(tokens.shape[0], rows, columns, -1).permute(0, 3, 1, 2)


def _mvit_by_hand(model: nn.Module, _index: int, output: object, tokens: Tensor) -> Tensor:
    """The tokens after the model's prefix, on the grid the block returned."""
    rows, columns = output[1]  # type: ignore[index]
    patches = tokens[:, model.num_prefix_tokens :]
    return patches.reshape(tokens.shape[0], rows, columns, -1).permute(0, 3, 1, 2)


def _hiera_by_hand(model: nn.Module, index: int, _output: object, tokens: Tensor) -> Tensor:
    """timm's own ``Reroll`` of block ``index``'s tokens."""
    return model.reroll(tokens, index).permute(0, 3, 1, 2)


def _first(output: object) -> Tensor:
    return output[0]  # type: ignore[index]


def _second(output: object) -> Tensor:
    return output[1]  # type: ignore[index]


def _itself(output: object) -> Tensor:
    return output  # type: ignore[return-value]


CASES = {
    "tnt": Case(_tnt, (32, 32), _second, _tnt_by_hand, (0, 1)),
    # 2 x 8 patches of 16 pixels, each embedded as 4 x 4 pixels by the last convolution
    "tnt, 32 x 128, pixel grid as large as the patch grid": Case(
        lambda: _tnt((32, 128), patch=16, global_pool="avg"),
        (32, 128),
        _second,
        _tnt_by_hand,
        (0, 1),
    ),
    "mvitv2": Case(_mvit, (32, 32), _first, _mvit_by_hand, (0, 1)),
    "mvitv2, class token, 32 x 48": Case(
        lambda: _mvit((32, 48), cls=True, depths=(1, 2, 1)),
        (32, 48),
        _first,
        _mvit_by_hand,
        (0, 2, 3),
    ),
    "hiera": Case(_hiera, (64, 64), _itself, _hiera_by_hand, (0, 1, 2, 3), (("coarse", False),)),
    "hiera, 64 x 128, 2 of 3 unrolls pooled": Case(
        lambda: _hiera((64, 128), q_pool=2),
        (64, 128),
        _itself,
        _hiera_by_hand,
        (0, 1, 2, 3),
        (("coarse", False),),
    ),
}


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks in forward order (MViTv2's inside its stages)."""
    names = ("tnt.Block", "mvitv2.MultiScaleBlock", "hiera.HieraBlock")
    return [
        m for m in model.modules() if f"{type(m).__module__}.{type(m).__name__}".endswith(names)
    ]


def _by_hand(case: Case, model: nn.Module, x: Tensor, target: int) -> list[tuple[Tensor, Tensor]]:
    """Each block's map and the target score's gradient on it, put on the grid by ``case``."""
    outputs: list[object] = []
    handles = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in _blocks(model)]
    try:
        with torch.enable_grad():
            score = model(x.requires_grad_(True))[:, target].sum()
    finally:
        for handle in handles:
            handle.remove()
    tensors = [case.pick(output) for output in outputs]
    grads = torch.autograd.grad(score, tensors)
    return [
        (case.by_hand(model, i, o, t.detach()), case.by_hand(model, i, o, g))
        for i, (o, t, g) in enumerate(zip(outputs, tensors, grads, strict=True))
    ]


@pytest.mark.parametrize("name", CASES)
def test_each_stage_is_the_blocks_tokens_on_their_grid(name: str) -> None:
    """Activation and gradient of every stage, against maps made without our reshapes."""
    case = CASES[name]
    model = case.make()
    x = torch.rand(2, 3, *case.size, generator=torch.Generator().manual_seed(3)).double()
    received = received_stage_maps(model, x, target=1)
    expected = _by_hand(case, model, x.clone(), target=1)
    assert len(received) == len(expected) == len(transformer_stages(model))
    for (act, grad), (act_by_hand, grad_by_hand) in zip(received, expected, strict=True):
        assert act.shape == act_by_hand.shape
        torch.testing.assert_close(act, act_by_hand, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, grad_by_hand, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        timms = model.forward_intermediates(
            x, intermediates_only=True, output_fmt="NCHW", **dict(case.intermediates)
        )
    assert len(timms) == len(case.timm_indices)
    for index, expected_map in zip(case.timm_indices, timms, strict=True):
        torch.testing.assert_close(received[index][0], expected_map, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_each_family_gets_a_fused_map_of_every_block(name: str) -> None:
    case = CASES[name]
    model = case.make()
    x = torch.rand(2, 3, *case.size, generator=torch.Generator().manual_seed(1)).double()
    maps, layers = IntegrativeCAM(model).attribute(x, target=2, return_layer_maps=True)
    assert maps.shape == (2, 1, *case.size) and torch.isfinite(maps).all()
    assert len(layers.names) == len(_blocks(model)) == len(transformer_stages(model))
    assert maps.amax(dim=(1, 2, 3)).min() > 0.5


def test_tnt_takes_the_patch_grid_the_model_says_not_the_last_convolutions() -> None:
    """The pixel embedding's convolution runs on each 16 x 16 patch: its grid is 4 x 4."""
    model = _tnt((32, 128), patch=16)
    (_, reshape), *_ = transformer_stages(model)
    assert reshape == TupleOutput(item=1, reshape=PatchTokens(1, grid=(2, 8)))


def test_unrolled_tokens_undo_timms_unroll() -> None:
    """timm's ``Unroll`` reorders a grid of numbered tokens; the reshape puts them back."""
    from timm.models.hiera import Unroll

    unroll = Unroll((64, 128), (4, 4), [(2, 2)] * 3)
    grid = torch.arange(16 * 32 * 2, dtype=torch.float64).view(1, 2, 16, 32)
    unrolled = unroll(grid.flatten(2).transpose(1, 2))
    assert not torch.equal(unrolled, grid.flatten(2).transpose(1, 2))  # reordered indeed
    reshape = UnrolledTokens(strides=((2, 2),) * 3, grid=(16, 32))
    assert torch.equal(reshape(unrolled), grid)
    assert torch.equal(UnrolledTokens((), (16, 32))(grid.flatten(2).mT), grid)  # row-major


def test_unrolled_tokens_refuse_tokens_that_fill_no_grid() -> None:
    with pytest.raises(ValueError, match=r"expected \(N, 64, C\).*mask"):
        UnrolledTokens(((2, 2),), (8, 8))(torch.zeros(1, 16, 4))  # the kept mask units alone
    with pytest.raises(ValueError, match="do not divide"):
        UnrolledTokens(((2, 2), (2, 2)), (4, 6))


def test_tuple_output_names_what_it_cannot_read() -> None:
    tokens = torch.zeros(1, 5, 3)
    with pytest.raises(ValueError, match="returned Tensor .no tuple."):
        TupleOutput(0).select(tokens)
    with pytest.raises(ValueError, match="item 1 of the block's output is int"):
        TupleOutput(1).select((tokens, 3))
    with pytest.raises(ValueError, match="item 1 .* not the .rows, columns. grid"):
        TupleOutput(0, PatchTokens(1), grid_item=1).select((tokens, "2x2"))
    with pytest.raises(ValueError, match="must be a PatchTokens"):
        TupleOutput(0, channels_last_to_grid, grid_item=1)
    picked, reshape = TupleOutput(0, tokens_to_grid, grid_item=1).select((tokens, (2, 2)))
    assert picked is tokens and reshape(tokens).shape == (1, 3, 2, 2)  # the leading token dropped


def test_chosen_tuple_layers_take_a_tuple_output() -> None:
    model = _tnt()
    x = torch.rand(1, 3, 32, 32).double()
    with pytest.raises(ValueError, match=r"returned a tuple.*TupleOutput\(item"):
        IntegrativeCAM(model, layers=[model.blocks[0]]).attribute(x, 0)
    read = TupleOutput(item=1, reshape=PatchTokens(1, grid=(4, 4)))
    cam = IntegrativeCAM(model, layers=[model.blocks[0]], reshape_transform=read)
    _, chosen = cam.attribute(x, 0, return_layer_maps=True)
    _, found = IntegrativeCAM(model).attribute(x, 0, return_layer_maps=True)
    torch.testing.assert_close(chosen.maps[:, 0], found.maps[:, 0])


def test_a_users_reshape_transform_reads_the_tensor_picked_out_of_the_tuple() -> None:
    """MViTv2 without a class token on a square image: square grids of its tokens are its own."""
    model = _mvit()
    x = torch.rand(1, 3, 32, 32).double()
    _, theirs = IntegrativeCAM(model, reshape_transform=PatchTokens(0)).attribute(
        x, 0, return_layer_maps=True
    )
    _, ours = IntegrativeCAM(model).attribute(x, 0, return_layer_maps=True)
    torch.testing.assert_close(theirs.maps, ours.maps)


@pytest.mark.parametrize("make", [_tnt, _mvit], ids=["tnt", "mvitv2"])
def test_grad_cam_layer_refuses_a_last_block_that_returns_a_tuple(make) -> None:
    with pytest.raises(ValueError, match="returns a tuple.*pytorch-grad-cam.*IntegrativeCAM"):
        grad_cam_layer(make())


def test_grad_cam_layer_of_hiera_is_its_last_block_rerolled() -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _hiera()
    layer, reshape = grad_cam_layer(model)
    assert layer is model.blocks[-1] and isinstance(reshape, UnrolledTokens)
    with GradCAM(model, [layer], reshape_transform=reshape) as cam:
        maps = cam(torch.rand(1, 3, 64, 64).double(), targets=[ClassifierOutputTarget(0)])
    assert maps.shape == (1, 64, 64) and maps.max() > 0.5


def test_hiera_blocks_outside_a_hiera_are_refused_with_the_reason() -> None:
    """Their token order is the model's schedule: without the model it is unknown."""
    from timm.models.hiera import HieraBlock

    torch.manual_seed(0)

    class Patches(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.flatten(2).transpose(1, 2)

    model = nn.Sequential(
        nn.Conv2d(3, 8, 4, stride=4), Patches(), HieraBlock(8, 8, heads=1), nn.Flatten(),
        nn.Linear(8 * 64, 3),
    ).eval()  # fmt: skip
    assert transformer_stages(model) == []
    assert any("mask-unit order" in reason for reason in refused_blocks(model))
    with pytest.raises(UnknownBlocksError, match="mask-unit order.*UnrolledTokens"):
        IntegrativeCAM(model).attribute(torch.rand(1, 3, 32, 32), target=0)


def test_a_video_hieras_blocks_are_not_found() -> None:
    """A 3-D Hiera's tokens make no 2-D grid: its blocks are no stages, and the reason is said."""
    torch.manual_seed(0)
    model = timm.models.hiera.Hiera(
        img_size=(2, 32, 32), embed_dim=8, num_heads=1, stages=(1, 1), q_pool=1,
        q_stride=(1, 2, 2), mask_unit_size=(1, 4, 4), mask_unit_attn=(True, False),
        patch_kernel=(1, 7, 7), patch_stride=(1, 4, 4), patch_padding=(0, 3, 3),
        sep_pos_embed=True, num_classes=3,
    )  # fmt: skip
    assert transformer_stages(model) == []
    assert any("2-D timm Hiera" in reason for reason in refused_blocks(model))
