"""The stages of a vision transformer: its blocks' token maps, reshaped to the patch grid.

A vision transformer has one convolution (its patch embedding); its feature maps are the token
maps its blocks output. As pytorch-grad-cam's ``reshape_transform`` does, each block's output
is turned into an (N, C, H, W) map:

- [`tokens_to_grid`][ctc_plugin.cam.tokens_to_grid]: (N, T, D) tokens (ViT), the leading extra
  tokens (class token, registers) dropped, the rest reshaped to the square patch grid;
- [`channels_last_to_grid`][ctc_plugin.cam.channels_last_to_grid]: (N, H, W, C) maps (Swin's blocks,
  which merge their windows back into the grid before they return);
- MaxViT's layers return (N, C, H, W) maps already.

[`transformer_stages`][ctc_plugin.cam.transformer_stages] finds the blocks of torchvision's ViT,
Swin (v1 and v2) and MaxViT, of the zoo's ViT and of any model whose blocks are of a type registered
in [`BLOCK_RESHAPES`][ctc_plugin.cam.BLOCK_RESHAPES].
"""

from __future__ import annotations

import math
from collections.abc import Callable

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

    Raises:
        ValueError: Naming the grid argument to pass (the returned reshape raises it during the
            pass, before any map is made of the wrong tokens).
    """
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


def transformer_stages(model: nn.Module) -> list[tuple[nn.Module, Reshape]]:
    """The transformer blocks of ``model``, in module order, each with its output's reshape.

    Empty for a model without blocks of a known type (torchvision's ViT ``EncoderBlock``, Swin
    ``SwinTransformerBlock``/``SwinTransformerBlockV2``, MaxViT ``MaxVitLayer``, and the types in
    [`BLOCK_RESHAPES`][ctc_plugin.cam.BLOCK_RESHAPES]).
    """
    known = {**_known_blocks(), **BLOCK_RESHAPES}
    stages = []
    for module in model.modules():
        reshape = next((r for kind, r in known.items() if type(module) is kind), None)
        if reshape is not None:
            stages.append((module, reshape))
    return stages


def grad_cam_layer(model: nn.Module) -> tuple[nn.Module, Reshape | None]:
    """The layer Grad-CAM conventionally explains, with the reshape pytorch-grad-cam needs.

    A vision transformer's last block (see
    [`transformer_stages`][ctc_plugin.cam.transformer_stages]) with its token reshape; for
    torchvision's ``VisionTransformer``, which classifies its class token alone, the first
    LayerNorm of the last block (``ln_1``), as pytorch-grad-cam's ViT tutorial does
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
        return last, reshape
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise ValueError("the model has no Conv2d and no known transformer block for Grad-CAM")
    return convolutions[-1], None


__all__ = [
    "BLOCK_RESHAPES",
    "channels_last_to_grid",
    "check_square_grid",
    "grad_cam_layer",
    "tokens_to_grid",
    "transformer_stages",
]
