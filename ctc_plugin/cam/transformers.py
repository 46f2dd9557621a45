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


def tokens_to_grid(tokens: Tensor) -> Tensor:
    """(N, T, D) tokens -> (N, D, s, s): the last ``s * s`` tokens on the patch grid.

    The leading tokens that do not fit the square (a class token, register tokens) are dropped.

    Raises:
        ValueError: If ``tokens`` is no (N, T, D) tensor.
    """
    if tokens.dim() != 3:
        raise ValueError(f"expected (N, tokens, channels) token maps, got {tuple(tokens.shape)}")
    side = math.isqrt(tokens.shape[1])
    grid = tokens[:, tokens.shape[1] - side * side :]
    return grid.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


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
    [`transformer_stages`][ctc_plugin.cam.transformer_stages]) with its token reshape, as
    pytorch-grad-cam's ViT tutorial does; otherwise the model's last ``nn.Conv2d`` and ``None``.

    Raises:
        ValueError: If the model has neither known transformer blocks nor a ``Conv2d``.
    """
    blocks = transformer_stages(model)
    if blocks:
        return blocks[-1]
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise ValueError("the model has no Conv2d and no known transformer block for Grad-CAM")
    return convolutions[-1], None


__all__ = [
    "BLOCK_RESHAPES",
    "channels_last_to_grid",
    "grad_cam_layer",
    "tokens_to_grid",
    "transformer_stages",
]
