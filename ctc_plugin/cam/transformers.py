"""The stages of a vision transformer: its blocks' token maps, reshaped to the patch grid.

A vision transformer has one convolution (its patch embedding); its feature maps are the token
maps its blocks output. As pytorch-grad-cam's ``reshape_transform`` does, each block's output
is turned into an (N, C, H, W) map:

- [`tokens_to_grid`][ctc_plugin.cam.tokens_to_grid]: (N, T, D) tokens (ViT), the leading extra
  tokens (class token, registers) dropped, the rest reshaped to the square patch grid;
- `PatchTokens`: the same with the number of leading
  extra tokens known (read from the model), the grid taken from the patch embedding;
- [`channels_last_to_grid`][ctc_plugin.cam.channels_last_to_grid]: (N, H, W, C) maps (Swin's blocks,
  which merge their windows back into the grid before they return);
- MaxViT's layers return (N, C, H, W) maps already.

[`transformer_stages`][ctc_plugin.cam.transformer_stages] finds the blocks of torchvision's ViT,
Swin (v1 and v2) and MaxViT, of the zoo's ViT, of the timm families in ``TIMM_BLOCKS`` (matched
by class name: timm is never imported here) and of any model whose blocks are of a type
registered in [`BLOCK_RESHAPES`][ctc_plugin.cam.BLOCK_RESHAPES].
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from torch import Tensor, nn

Reshape = Callable[[Tensor], Tensor]


def tokens_to_grid(tokens: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
    """(N, T, D) tokens -> (N, D, h, w): the last ``h * w`` tokens on the patch grid.

    The leading tokens that do not fit the grid (a class token, register tokens) are dropped.
    Without ``grid`` the grid is the largest square that fits, which is right for square images
    only: for a grid of 2 x 4 patches and a class token (9 tokens) it would be a 3 x 3 grid of
    the wrong tokens. For other grids, pass it:
    ``reshape_transform=functools.partial(tokens_to_grid, grid=(h, w))``
    ([`IntegrativeCAM`][ctc_plugin.cam.IntegrativeCAM] refuses non-square images with the
    square default).

    Args:
        tokens: The token maps, (N, T, D), patch tokens last in row-major order.
        grid: The patch grid ``(h, w)``; None: the largest square.

    Raises:
        ValueError: If ``tokens`` is no (N, T, D) tensor, or has fewer than ``h * w`` tokens.
    """
    if tokens.dim() != 3:
        raise ValueError(f"expected (N, tokens, channels) token maps, got {tuple(tokens.shape)}")
    count = tokens.shape[1]
    if grid is None:
        side = math.isqrt(count)
        grid = (side, side)
    height, width = (int(v) for v in grid)
    if height < 1 or width < 1 or height * width > count:
        raise ValueError(
            f"a patch grid of {height} x {width} does not fit {count} tokens; pass the grid "
            "of the model's patches, grid=(rows, columns)"
        )
    patches = tokens[:, count - height * width :]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


@dataclass(frozen=True)
class PatchTokens:
    """(N, T, D) tokens whose first ``prefix`` tokens are no patches -> (N, D, h, w).

    Where [`tokens_to_grid`][ctc_plugin.cam.tokens_to_grid]'s square default guesses how many
    leading tokens to drop, this reshape is told: timm's vision transformers say it
    (``model.num_prefix_tokens``: a class token, a distillation token, registers), and
    [`transformer_stages`][ctc_plugin.cam.transformer_stages] reads it there. Every other token
    is a patch, in row-major order. Without ``grid`` the patches must make a square grid;
    [`IntegrativeCAM`][ctc_plugin.cam.IntegrativeCAM] takes the grid from the model's patch
    embedding instead where its size matches (a non-square image included).

    Args:
        prefix: The leading tokens that are no patches.
        grid: The patch grid ``(rows, columns)``; None: the square of the patch count.

    Examples:
        >>> import torch
        >>> reshape = PatchTokens(prefix=5)  # a class token and 4 registers (DINOv2-reg4)
        >>> reshape(torch.zeros(2, 5 + 16, 384)).shape
        torch.Size([2, 384, 4, 4])
    """

    prefix: int = 0
    grid: tuple[int, int] | None = None

    def patches(self, tokens: Tensor) -> int:
        """The number of patch tokens in ``tokens``.

        Raises:
            ValueError: If ``tokens`` is no (N, T, D) tensor with more than ``prefix`` tokens.
        """
        if tokens.dim() != 3:
            raise ValueError(
                f"expected (N, tokens, channels) token maps, got {tuple(tokens.shape)}"
            )
        count = int(tokens.shape[1]) - self.prefix
        if count < 1:
            raise ValueError(
                f"{tokens.shape[1]} tokens leave no patch after the {self.prefix} leading ones"
            )
        return count

    def __call__(self, tokens: Tensor) -> Tensor:
        """Reshape the patch tokens to the grid.

        Raises:
            ValueError: If ``tokens`` is no (N, T, D) tensor, or its patch tokens do not fill
                the grid (without ``grid``: do not make a square).
        """
        patches = self.patches(tokens)
        grid = self.grid
        if grid is None:
            side = math.isqrt(patches)
            grid = (side, side)
        if grid[0] * grid[1] != patches:
            raise ValueError(
                f"the {patches} patch tokens (after {self.prefix} leading tokens) do not fill a "
                f"{grid[0]} x {grid[1]} grid; pass the model's patch grid: "
                f"PatchTokens(prefix={self.prefix}, grid=(rows, columns))"
            )
        return tokens_to_grid(tokens, grid)


def reads_patch_grid(reshape: Reshape | None) -> bool:
    """Whether ``reshape`` guesses the patch grid, which the patch embedding's grid must check.

    True for [`tokens_to_grid`][ctc_plugin.cam.tokens_to_grid] itself (its square default) and
    a `PatchTokens` without a grid; see
    `check_square_grid`.
    """
    return reshape is tokens_to_grid or (isinstance(reshape, PatchTokens) and reshape.grid is None)


def _patch_tokens_on_the_patch_grid(
    reshape: PatchTokens,
    size: tuple[int, int],
    patch_grid: Callable[[], tuple[int, int] | None] | None,
) -> Reshape:
    """``reshape`` on the patch embedding's grid where it has as many cells as there are patches.

    Otherwise (patches merged or subsampled since, as in LeViT or PiT, or an attention's
    spatial-reduction convolution ran last, as in Twins) the square grid, which is right for a
    square image only: a non-square one is refused.
    """

    def patch_tokens_on_the_patch_grid(tokens: Tensor) -> Tensor:
        patches = reshape.patches(tokens)
        seen = patch_grid() if patch_grid is not None else None
        if seen is not None and seen[0] * seen[1] == patches:
            return replace(reshape, grid=(int(seen[0]), int(seen[1])))(tokens)
        if size[0] != size[1]:
            raise ValueError(
                f"the input is {size[0]} x {size[1]} pixels, and the {patches} patch tokens of "
                f"shape {tuple(tokens.shape)} do not fill the grid of the last convolution "
                f"({seen}): their grid is unknown; pass reshape_transform=ctc_plugin.cam."
                f"transformers.PatchTokens(prefix={reshape.prefix}, grid=(rows, columns))"
            )
        return reshape(tokens)

    return patch_tokens_on_the_patch_grid


def check_square_grid(
    reshape: Reshape | None,
    size: tuple[int, int],
    patch_grid: Callable[[], tuple[int, int] | None] | None = None,
) -> Reshape | None:
    """Check the square default of `tokens_to_grid` against the image; return the reshape to use.

    The default guesses the patch grid from the token count (the largest square that fits).
    For an image that is not square that guess is wrong (its patch grid is not square either,
    see [`tokens_to_grid`][ctc_plugin.cam.tokens_to_grid]), and with many extra tokens
    (registers) it is too large: 16 patches with a class token and 8 registers make 25 tokens,
    read as 5 x 5. So the default is refused for a non-square image, and the returned reshape
    compares its guess with ``patch_grid()``, the grid the model's patch embedding made (the
    output size of the last convolution before the layer), and refuses a guess that differs.
    Where ``patch_grid`` gives ``None`` (no convolution ran: a linear patch embedding), the
    guess stands. Any other reshape is returned as it is.

    A `PatchTokens` without a grid (the number of
    leading tokens known) takes ``patch_grid()`` where it has as many cells as there are patch
    tokens, a non-square image included; otherwise its square, for a square image only.

    Raises:
        ValueError: Naming the grid argument to pass (the returned reshape raises it during the
            pass, before any map is made of the wrong tokens).
    """
    if isinstance(reshape, PatchTokens) and reshape.grid is None:
        return _patch_tokens_on_the_patch_grid(reshape, size, patch_grid)
    if reshape is not tokens_to_grid:
        return reshape
    if size[0] != size[1]:
        raise ValueError(
            f"the input is {size[0]} x {size[1]} pixels, but tokens_to_grid assumes a square "
            "patch grid and would put the wrong tokens on it; pass reshape_transform="
            "functools.partial(ctc_plugin.cam.tokens_to_grid, grid=(rows, columns)) with the "
            "model's patch grid"
        )

    def square_grid_of_the_patches(tokens: Tensor) -> Tensor:
        grid = tokens_to_grid(tokens)
        side = grid.shape[-1]
        seen = patch_grid() if patch_grid is not None else None
        if seen is not None and tuple(seen) != (side, side):
            if tokens.shape[0] >= seen[0] * seen[1] > tokens.shape[1]:
                raise ValueError(
                    f"the tokens of shape {tuple(tokens.shape)} look sequence-first (tokens, "
                    "batch, channels), as OpenAI CLIP's blocks hold them, while tokens_to_grid "
                    "takes (batch, tokens, channels); pass reshape_transform=lambda t: "
                    "ctc_plugin.cam.tokens_to_grid(t.permute(1, 0, 2), "
                    f"grid=({seen[0]}, {seen[1]}))"
                )
            raise ValueError(
                f"tokens_to_grid read the {tokens.shape[1]} tokens as a {side} x {side} patch "
                f"grid, but the model's patch embedding made a {seen[0]} x {seen[1]} grid: the "
                "model has more extra tokens (class token, registers) than the square default "
                "can tell apart; pass reshape_transform=functools.partial("
                f"ctc_plugin.cam.tokens_to_grid, grid=({seen[0]}, {seen[1]}))"
            )
        return grid

    return square_grid_of_the_patches


def channels_last_to_grid(maps: Tensor) -> Tensor:
    """(N, H, W, C) maps -> (N, C, H, W)."""
    if maps.dim() != 4:
        raise ValueError(f"expected (N, H, W, C) maps, got {tuple(maps.shape)}")
    return maps.permute(0, 3, 1, 2)


def _identity(maps: Tensor) -> Tensor:
    return maps


def blocks_of_blocks_to_grid(maps: Tensor) -> Tensor:
    """(N, T, S, C) -> (N, C, H, W): NesT's square blocks of square token grids merged back.

    NesT's layers hold a ``sqrt(T) x sqrt(T)`` grid of blocks, each of ``sqrt(S) x sqrt(S)``
    tokens, both row-major (timm's ``nest.blockify``); this is its ``deblockify``.

    Raises:
        ValueError: If ``maps`` is not 4-D or ``T`` or ``S`` is not a square.
    """
    if maps.dim() != 4:
        raise ValueError(f"expected (N, blocks, tokens, C) maps, got {tuple(maps.shape)}")
    batch, blocks, tokens, channels = maps.shape
    grid, side = math.isqrt(blocks), math.isqrt(tokens)
    if grid * grid != blocks or side * side != tokens:
        raise ValueError(
            f"expected a square grid of square blocks, got {blocks} blocks of {tokens} tokens"
        )
    maps = maps.reshape(batch, grid, grid, side, side, channels).transpose(2, 3)
    return maps.reshape(batch, grid * side, grid * side, channels).permute(0, 3, 1, 2)


def _known_blocks() -> dict[type[nn.Module], Reshape]:
    """The transformer block types of torchvision and the reshape of their outputs."""
    from torchvision.models.maxvit import MaxVitLayer
    from torchvision.models.swin_transformer import SwinTransformerBlock, SwinTransformerBlockV2
    from torchvision.models.vision_transformer import EncoderBlock

    return {
        EncoderBlock: tokens_to_grid,
        SwinTransformerBlock: channels_last_to_grid,
        SwinTransformerBlockV2: channels_last_to_grid,
        MaxVitLayer: _identity,
    }


#: Block types of other models and the reshape of their outputs to (N, C, H, W); add yours.
BLOCK_RESHAPES: dict[type[nn.Module], Reshape] = {}

_PATCHES = PatchTokens(prefix=0)

#: timm's block classes (``module.qualname``, matched exactly, so timm is never imported here)
#: and the reshape of their outputs; ``None``: (N, T, D) tokens led by the model's own extra
#: tokens, a `PatchTokens` of the number the model
#: says (``num_prefix_tokens``), the square default of ``tokens_to_grid`` where it says none.
TIMM_BLOCKS: dict[str, Reshape | None] = {
    # ViT, DeiT, DINOv2 (registers), CLIP, PiT, CrossViT; EVA; BEiT; relative-position ViTs
    "timm.models.vision_transformer.Block": None,
    "timm.models.vision_transformer.ResPostBlock": None,
    "timm.models.vision_transformer.ParallelScalingBlock": None,
    "timm.models.vision_transformer.ParallelThingsBlock": None,
    "timm.models.eva.EvaBlock": None,
    "timm.models.eva.EvaBlockPostNorm": None,
    "timm.models.beit.Block": None,
    "timm.models.vision_transformer_relpos.RelPosBlock": None,
    "timm.models.vision_transformer_relpos.ResPostRelPosBlock": None,
    # (N, H*W, C) patch tokens alone: CaiT's and XCiT's patch blocks (their class-attention
    # blocks, which update the class token alone, are left out), Twins, PVT v2, LeViT, the
    # attention stage of EfficientFormer, MLP-Mixer, ResMLP, gMLP
    "timm.models.cait.LayerScaleBlock": _PATCHES,
    "timm.models.xcit.XCABlock": _PATCHES,
    "timm.models.twins.Block": _PATCHES,
    "timm.models.pvt_v2.Block": _PATCHES,
    "timm.models.levit.LevitBlock": _PATCHES,
    "timm.models.efficientformer.MetaBlock1d": _PATCHES,
    "timm.models.mlp_mixer.MixerBlock": _PATCHES,
    "timm.models.mlp_mixer.ResBlock": _PATCHES,
    "timm.models.mlp_mixer.SpatialGatingBlock": _PATCHES,
    # (N, H, W, C): Swin v1/v2, GCViT, TinyViT, SAM's ViT
    "timm.models.swin_transformer.SwinTransformerBlock": channels_last_to_grid,
    "timm.models.swin_transformer_v2.SwinTransformerV2Block": channels_last_to_grid,
    "timm.models.gcvit.GlobalContextVitBlock": channels_last_to_grid,
    "timm.models.tiny_vit.TinyVitBlock": channels_last_to_grid,
    "timm.models.vision_transformer_sam.Block": channels_last_to_grid,
    # (N, T, S, C) blocks of tokens: NesT
    "timm.models.nest.TransformerLayer": blocks_of_blocks_to_grid,
    # (N, C, H, W): MaxViT, CoAtNet, DaViT, TinyViT's and EfficientFormer's convolutional
    # stages, EfficientFormerV2, EdgeNeXt, MobileViT (v1, v2: its transformer is inside), Visformer
    "timm.models.maxxvit.MaxxVitBlock": _identity,
    "timm.models.maxxvit.ParallelMaxxVitBlock": _identity,
    "timm.models.maxxvit.MbConvBlock": _identity,
    "timm.models.maxxvit.TransformerBlock2d": _identity,
    "timm.models.davit.SpatialBlock": _identity,
    "timm.models.davit.ChannelBlock": _identity,
    "timm.models.tiny_vit.MBConv": _identity,
    "timm.models.efficientformer.MetaBlock2d": _identity,
    "timm.models.efficientformer_v2.EfficientFormerV2Block": _identity,
    "timm.models.edgenext.ConvBlock": _identity,
    "timm.models.edgenext.SplitTransposeBlock": _identity,
    "timm.models.mobilevit.MobileVitBlock": _identity,
    "timm.models.mobilevit.MobileVitV2Block": _identity,
    "timm.models.visformer.Block": _identity,
}

#: timm blocks that are stages only beside others: MobileViT's convolutional blocks (byobnet's,
#: shared with CNNs such as RepVGG) in a model that has MobileViT blocks.
_TIMM_ALONGSIDE: dict[str, tuple[str, ...]] = {
    "timm.models.byobnet.BottleneckBlock": (
        "timm.models.mobilevit.MobileVitBlock",
        "timm.models.mobilevit.MobileVitV2Block",
    ),
}

#: timm models that say their number of leading extra tokens otherwise than ``num_prefix_tokens``.
_TIMM_PREFIX: dict[str, str | int] = {
    "timm.models.pit.PoolingVisionTransformer": "num_tokens",  # 2 when distilled
    "timm.models.crossvit.CrossVit": 1,  # one class token per branch
}

#: timm blocks that cannot be found soundly, and why; named when Integrative CAM refuses.
TIMM_REFUSED: dict[str, str] = {
    "timm.models.tnt.Block": (
        "TNT's blocks return a (pixel tokens, patch tokens) tuple, and no submodule returns the "
        "patch tokens"
    ),
    "timm.models.mvitv2.MultiScaleBlock": (
        "MViTv2's blocks return a (tokens, grid size) tuple, and their pooling attention "
        "changes the grid inside the block"
    ),
    "timm.models.hiera.HieraBlock": (
        "Hiera's blocks hold their tokens in mask-unit order, not on the patch grid (reorder "
        "them as timm's Hiera.reroll does in a reshape of your own)"
    ),
}


def _qualified(module: nn.Module) -> str:
    kind = type(module)
    return f"{kind.__module__}.{kind.__qualname__}"


def _timm_blocks(model: nn.Module) -> dict[str, Reshape | None]:
    """``TIMM_BLOCKS`` and the blocks found alongside others in ``model`` (none without timm)."""
    if "timm" not in sys.modules:  # no timm class can be in the model: nothing to match
        return {}
    present = {_qualified(m) for m in model.modules()}
    alongside = {
        name: _identity
        for name, others in _TIMM_ALONGSIDE.items()
        if name in present and present.intersection(others)
    }
    return {**TIMM_BLOCKS, **alongside}


def _prefix_tokens(module: nn.Module, inherited: int | None) -> int | None:
    """The number of leading extra tokens ``module`` says its blocks hold, else ``inherited``."""
    said = _TIMM_PREFIX.get(_qualified(module), "num_prefix_tokens")
    value = said if isinstance(said, int) else getattr(module, said, None)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return inherited


def _found_blocks(
    module: nn.Module,
    known: dict[type[nn.Module], Reshape],
    timm: dict[str, Reshape | None],
    prefix: int | None,
    seen: set[int],
) -> Iterator[tuple[nn.Module, Reshape]]:
    """The known blocks in ``module`` in module order; a found block is not searched further."""
    if id(module) in seen:
        return
    seen.add(id(module))
    kind = type(module)
    if kind in known:
        yield module, known[kind]
        return
    name = _qualified(module)
    if name in timm:
        reshape = timm[name]
        if reshape is None:
            reshape = tokens_to_grid if prefix is None else PatchTokens(prefix)
        yield module, reshape
        return
    prefix = _prefix_tokens(module, prefix)
    for child in module.children():
        yield from _found_blocks(child, known, timm, prefix, seen)


def transformer_stages(model: nn.Module) -> list[tuple[nn.Module, Reshape]]:
    """The transformer blocks of ``model``, in module order, each with its output's reshape.

    The known blocks: torchvision's ViT ``EncoderBlock``, Swin
    ``SwinTransformerBlock``/``SwinTransformerBlockV2``, MaxViT ``MaxVitLayer``, the types in
    [`BLOCK_RESHAPES`][ctc_plugin.cam.BLOCK_RESHAPES] (these first), and timm's in
    ``TIMM_BLOCKS``: ViT and its variants (DeiT, DINOv2 with registers, CLIP, EVA, BEiT, PiT,
    CrossViT), CaiT, XCiT, Twins, PVT v2, Swin v1/v2, NesT, DaViT, GCViT, MaxViT, CoAtNet,
    TinyViT, LeViT, EfficientFormer v1/v2, EdgeNeXt, MobileViT v1/v2, Visformer, MLP-Mixer,
    ResMLP and gMLP. A block inside a found block is not a stage of its own (MobileViT's
    transformer blocks, inside its MobileViT blocks). The leading extra tokens of timm's ViT
    blocks are as many as the model says (``num_prefix_tokens``: class, distillation and
    register tokens). Empty for a model without known blocks.
    """
    known = {**_known_blocks(), **BLOCK_RESHAPES}
    return list(_found_blocks(model, known, _timm_blocks(model), None, set()))


def refused_blocks(model: nn.Module) -> list[str]:
    """Why the blocks of ``model`` that cannot be found soundly (``TIMM_REFUSED``) are not."""
    if "timm" not in sys.modules:
        return []
    reasons = {TIMM_REFUSED.get(_qualified(m)) for m in model.modules()}
    return sorted(reason for reason in reasons if reason is not None)


def _classifies_prefix_tokens(model: nn.Module, block: nn.Module) -> bool:
    """Whether the timm model holding ``block`` classifies its leading tokens alone.

    timm's ViTs with ``global_pool="token"`` read the class token only: the patch tokens their
    last block outputs reach no score.
    """
    owners = [
        m
        for m in model.modules()
        if isinstance(getattr(m, "global_pool", None), str) and any(b is block for b in m.modules())
    ]
    return bool(owners) and owners[-1].global_pool == "token"


def grad_cam_layer(model: nn.Module) -> tuple[nn.Module, Reshape | None]:
    """The layer Grad-CAM conventionally explains, with the reshape pytorch-grad-cam needs.

    A vision transformer's last block (see
    [`transformer_stages`][ctc_plugin.cam.transformer_stages]) with its token reshape; for a
    ViT that classifies its class token alone (torchvision's ``VisionTransformer``, timm's ViTs
    with ``global_pool="token"``: ViT, DeiT, DINOv2, CLIP, PiT, CrossViT), the first LayerNorm of
    the last block (``ln_1``, timm's ``norm1``), as pytorch-grad-cam's ViT tutorial does
    (``blocks[-1].norm1``): the patch tokens the last block outputs reach no score, so their
    gradient, and a Grad-CAM map of them, is zero. Otherwise the model's last ``nn.Conv2d`` and
    ``None``.

    Raises:
        ValueError: If the model has neither known transformer blocks nor a ``Conv2d``.
    """
    from torchvision.models.vision_transformer import VisionTransformer

    blocks = transformer_stages(model)
    if blocks:
        last, reshape = blocks[-1]
        # torchvision's ViT, bare or wrapped (a normalising nn.Sequential, say)
        if any(isinstance(m, VisionTransformer) for m in model.modules()):
            return last.ln_1, reshape
        norm = getattr(last, "norm1", None)
        vit = TIMM_BLOCKS.get(_qualified(last), _identity) is None
        if vit and isinstance(norm, nn.Module) and _classifies_prefix_tokens(model, last):
            return norm, reshape
        return last, reshape
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise ValueError("the model has no Conv2d and no known transformer block for Grad-CAM")
    return convolutions[-1], None


__all__ = [
    "BLOCK_RESHAPES",
    "TIMM_BLOCKS",
    "TIMM_REFUSED",
    "PatchTokens",
    "blocks_of_blocks_to_grid",
    "channels_last_to_grid",
    "check_square_grid",
    "grad_cam_layer",
    "reads_patch_grid",
    "refused_blocks",
    "tokens_to_grid",
    "transformer_stages",
]
