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
- MaxViT's layers return (N, C, H, W) maps already;
- `UnrolledTokens`: (N, T, D) tokens in Hiera's
  mask-unit ("unrolled") order, put back on the grid;
- `TupleOutput`: a block that returns a tuple
  (TNT's (pixel tokens, patch tokens), MViTv2's (tokens, grid size), Hugging Face's layers'
  (hidden states, ...)): the tensor to explain is picked out of it (its gradient is hooked),
  then reshaped, on the grid the tuple carries or the block is called with (Hugging Face's
  Swin and PVT layers get it as arguments, read by `call_arguments`) where either says one.

[`transformer_stages`][ctc_plugin.cam.transformer_stages] finds the blocks of torchvision's ViT,
Swin (v1 and v2) and MaxViT, of the zoo's ViT, of the timm families in ``TIMM_BLOCKS`` and the
Hugging Face ``transformers`` families in ``HUGGINGFACE_BLOCKS`` (both matched by qualified class
name: neither library is ever imported here), of timm's and Hugging Face's Hiera (whose blocks'
token order only the model says) and of any model whose blocks are of a type registered in
[`BLOCK_RESHAPES`][ctc_plugin.cam.BLOCK_RESHAPES]. How many extra tokens lead a ViT's tokens is
read from the model (timm's ``num_prefix_tokens``; for Hugging Face's, the tokens their embeddings
put first and ``config.num_register_tokens``), never guessed from the token count. Blocks that
cannot be found soundly (a Hiera block outside its Hiera) are named with the reason, in
``TIMM_REFUSED`` and ``HUGGINGFACE_REFUSED``, when Integrative CAM refuses the model.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial

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


def reads_patch_grid(reshape: BlockReshape | None) -> bool:
    """Whether ``reshape`` guesses the patch grid, which the patch embedding's grid must check.

    True for [`tokens_to_grid`][ctc_plugin.cam.tokens_to_grid] itself (its square default), a
    `PatchTokens` without a grid, and a `TupleOutput` reshaping its tensor with one of these
    (without a grid said by each call); see `check_square_grid`.
    """
    if isinstance(reshape, TupleOutput):
        return not reshape.carries_grid and reads_patch_grid(reshape.reshape)
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
    reshape: BlockReshape | None,
    size: tuple[int, int],
    patch_grid: Callable[[], tuple[int, int] | None] | None = None,
) -> BlockReshape | None:
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
    tokens, a non-square image included; otherwise its square, for a square image only. A
    `TupleOutput` whose calls do not say the grid has its own reshape checked so.

    Raises:
        ValueError: Naming the grid argument to pass (the returned reshape raises it during the
            pass, before any map is made of the wrong tokens).
    """
    if isinstance(reshape, TupleOutput):
        if reshape.carries_grid:  # each call says the grid
            return reshape
        return replace(reshape, reshape=check_square_grid(reshape.reshape, size, patch_grid))
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


def _grid_pair(value: object) -> tuple[int, int] | None:
    """``value`` as a (rows, columns) grid of positive ints, ``None`` if it is not one."""
    try:
        rows, columns = (int(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return (rows, columns) if rows > 0 and columns > 0 else None


@dataclass(frozen=True)
class UnrolledTokens:
    """(N, T, C) tokens in Hiera's mask-unit order -> (N, C, rows, columns).

    timm's Hiera reorders its patch tokens once, before its blocks (``Unroll``): for each stride
    ``(sy, sx)`` of its schedule in turn, the grid is cut into ``sy x sx`` interleaved sub-grids
    (``row = r * sy + i``, ``column = c * sx + j``) whose offsets ``(i, j)`` move in front. The
    tokens are then ordered ``(i_1, j_1, ..., i_m, j_m, r, c)``, the first stride's offsets
    outermost, so that a block's max pool over the first stride is a max over the leading
    ``sy * sx`` slices; each pool consumes one stride. This reshape undoes the strides left.

    Args:
        strides: The strides not yet consumed by pooling, in unroll order (Hiera's
            ``reroll.schedule[block][0]``); empty: the tokens are in row-major order.
        grid: The tokens' grid ``(rows, columns)`` (``reroll.schedule[block][1]``).

    Raises:
        ValueError: At construction, if a stride does not divide the grid; when called, if the
            tokens are not (N, rows * columns, C) (Hiera run with a mask keeps fewer tokens).

    Examples:
        >>> import torch
        >>> grid = torch.arange(16.0).view(1, 1, 4, 4)
        >>> unrolled = grid.view(1, 1, 2, 2, 2, 2).permute(0, 3, 5, 2, 4, 1).reshape(1, 16, 1)
        >>> torch.equal(UnrolledTokens(strides=((2, 2),), grid=(4, 4))(unrolled), grid)
        True
    """

    strides: tuple[tuple[int, int], ...]
    grid: tuple[int, int]

    def __post_init__(self) -> None:
        rows, columns = self.grid
        for sy, sx in self.strides:
            if sy < 1 or sx < 1 or rows % sy or columns % sx:
                raise ValueError(
                    f"the strides {self.strides} do not divide the {self.grid[0]} x "
                    f"{self.grid[1]} grid of the tokens"
                )
            rows, columns = rows // sy, columns // sx

    def __call__(self, tokens: Tensor) -> Tensor:
        """Put the tokens (or their gradient) back on the grid, (N, C, rows, columns)."""
        rows, columns = self.grid
        if tokens.dim() != 3 or tokens.shape[1] != rows * columns:
            raise ValueError(
                f"expected (N, {rows * columns}, C) tokens in mask-unit order on a {rows} x "
                f"{columns} grid, got {tuple(tokens.shape)} (a Hiera run with a mask keeps only "
                "the tokens of the kept mask units, which fill no grid: run it without one)"
            )
        batch, _, channels = tokens.shape
        count = len(self.strides)
        inner_rows = rows // math.prod(sy for sy, _ in self.strides)
        inner_columns = columns // math.prod(sx for _, sx in self.strides)
        offsets = [size for stride in self.strides for size in stride]
        maps = tokens.reshape(batch, *offsets, inner_rows, inner_columns, channels)
        # dims: 0 batch, 1 + 2k / 2 + 2k the k-th stride's row / column offset, then r, c, C;
        # a row is (r, i_m, ..., i_1) read as mixed-radix digits, most significant first
        row_dims = [1 + 2 * count, *(1 + 2 * k for k in reversed(range(count)))]
        column_dims = [2 + 2 * count, *(2 + 2 * k for k in reversed(range(count)))]
        maps = maps.permute(0, 3 + 2 * count, *row_dims, *column_dims)
        return maps.reshape(batch, channels, rows, columns)


@dataclass(frozen=True)
class TupleOutput:
    """How to read a block that returns a tuple: the tensor at ``item``, reshaped.

    A forward hook sees the whole tuple; the feature map is one tensor in it (the stage hooks
    its gradient), which ``reshape`` turns, with its gradient, into an (N, C, H, W) map
    (``None``: it is one). Where the tokens' grid can differ from call to call with the input,
    the block's call says it, and each call's ``reshape`` is then a `PatchTokens` on that grid
    (the leading tokens as many as ``reshape``, a `PatchTokens`, says; for
    [`tokens_to_grid`][ctc_plugin.cam.tokens_to_grid] or ``None``, the leading tokens that do
    not fit the grid):

    - ``grid_item``: the tuple carries the grid (MViTv2's blocks return the grid their pooling
      attention left);
    - ``grid_arguments``: the block is called with it (Hugging Face's Swin layers get
      ``input_dimensions``, a (rows, columns) pair; PVT's get ``height`` and ``width``), the
      names of its ``forward``'s arguments that hold it.

    [`IntegrativeCAM`][ctc_plugin.cam.IntegrativeCAM] takes one as a block's reshape (in
    ``TIMM_BLOCKS``, ``HUGGINGFACE_BLOCKS``, [`BLOCK_RESHAPES`][ctc_plugin.cam.BLOCK_RESHAPES],
    or as ``reshape_transform`` with ``layers=``). pytorch-grad-cam cannot hook a tuple's
    gradient.

    Args:
        item: The position of the feature map in the tuple.
        reshape: The reshape of that tensor and its gradient.
        grid_item: The position of the ``(rows, columns)`` grid in the tuple, or ``None``.
        grid_arguments: The names of the block's arguments that hold its tokens' grid: one
            (a ``(rows, columns)`` pair) or two (rows, then columns); empty: none.

    Raises:
        ValueError: At construction, if both ``grid_item`` and ``grid_arguments`` are given,
            ``grid_arguments`` names neither one nor two arguments, or a grid is given with a
            ``reshape`` that takes none.

    Examples:
        >>> import torch
        >>> tnt = TupleOutput(item=1, reshape=PatchTokens(1, grid=(2, 4)))  # TNT: (pixels, patches)
        >>> tokens, reshape = tnt.select((torch.zeros(8, 4, 6), torch.zeros(1, 9, 16)))
        >>> reshape(tokens).shape
        torch.Size([1, 16, 2, 4])
        >>> mvit = TupleOutput(item=0, reshape=PatchTokens(1), grid_item=1)  # MViTv2
        >>> tokens, reshape = mvit.select((torch.zeros(1, 1 + 6, 16), [2, 3]))
        >>> reshape(tokens).shape
        torch.Size([1, 16, 2, 3])
        >>> pvt = TupleOutput(item=0, reshape=PatchTokens(0), grid_arguments=("height", "width"))
        >>> tokens, reshape = pvt.select((torch.zeros(1, 6, 16),), {"height": 2, "width": 3})
        >>> reshape(tokens).shape
        torch.Size([1, 16, 2, 3])
    """

    item: int
    reshape: Reshape | None = None
    grid_item: int | None = None
    grid_arguments: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.grid_item is not None and self.grid_arguments:
            raise ValueError("give the grid's place in the tuple or in the arguments, not both")
        if len(self.grid_arguments) > 2:
            raise ValueError(
                f"grid_arguments {self.grid_arguments} name more than the (rows, columns) pair "
                "or the rows and the columns"
            )
        if self.carries_grid and not (
            self.reshape is None
            or self.reshape is tokens_to_grid
            or isinstance(self.reshape, PatchTokens)
        ):
            raise ValueError(
                "with grid_item or grid_arguments, the tokens are put on the grid of each call: "
                "reshape must be a PatchTokens (the number of leading tokens), tokens_to_grid "
                "or None"
            )

    @property
    def carries_grid(self) -> bool:
        """Whether each call says the grid (``grid_item`` or ``grid_arguments``)."""
        return self.grid_item is not None or bool(self.grid_arguments)

    def _grid(self, output: tuple, arguments: Mapping[str, object]) -> tuple[int, int]:
        if self.grid_item is not None:
            value = output[self.grid_item]
            where = f"item {self.grid_item} of the block's output"
            advice = "give TupleOutput the grid_item that holds it, or none"
        else:
            missing = [name for name in self.grid_arguments if name not in arguments]
            if missing:
                raise ValueError(
                    f"the block was called without its argument(s) {missing}, which hold the "
                    f"grid of its tokens (called with {sorted(arguments)}); give TupleOutput "
                    "the grid_arguments of the block's forward"
                )
            values = [arguments[name] for name in self.grid_arguments]
            value = values[0] if len(values) == 1 else values
            where = f"the block's argument(s) {list(self.grid_arguments)}"
            advice = "give TupleOutput the grid_arguments that hold it"
        grid = _grid_pair(value)
        if grid is None:
            raise ValueError(
                f"{where} is {value!r}, not the (rows, columns) grid of its tokens; {advice}"
            )
        return grid

    def select(
        self, output: object, arguments: Mapping[str, object] | None = None
    ) -> tuple[Tensor, Reshape | None]:
        """The tensor to explain in a block's ``output``, and the reshape of it and its gradient.

        Args:
            output: What the block returned.
            arguments: The block's arguments by name (see `call_arguments`), for
                ``grid_arguments``.

        Raises:
            ValueError: If ``output`` is no tuple (or list) with a tensor at ``item`` (and the
                grid at ``grid_item``, or in ``arguments``).
        """
        needed = max(self.item, -1 if self.grid_item is None else self.grid_item)
        if not isinstance(output, (tuple, list)) or len(output) <= needed:
            kind = f"{len(output)} items" if isinstance(output, (tuple, list)) else "no tuple"
            raise ValueError(
                f"the block returned {type(output).__name__} ({kind}), but its TupleOutput reads "
                f"item {needed} of a tuple; give the reshape of what the block returns"
            )
        tensor = output[self.item]
        if not isinstance(tensor, Tensor):
            raise ValueError(
                f"item {self.item} of the block's output is {type(tensor).__name__}, not the "
                "tensor to explain; give TupleOutput the item that holds the feature map"
            )
        if not self.carries_grid:
            return tensor, self.reshape
        grid = self._grid(output, arguments or {})
        if isinstance(self.reshape, PatchTokens):
            return tensor, replace(self.reshape, grid=grid)
        return tensor, partial(tokens_to_grid, grid=grid)


def call_arguments(
    module: nn.Module, args: tuple, kwargs: Mapping[str, object]
) -> dict[str, object]:
    """The arguments of a call of ``module`` by the names of its ``forward``'s parameters.

    What a forward hook registered ``with_kwargs=True`` sees, bound to the signature; for a
    `TupleOutput` with ``grid_arguments``. Empty where they do not bind to it.
    """
    try:
        bound = inspect.signature(module.forward).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):  # no signature, or not the arguments forward takes
        return {}
    return dict(bound.arguments)


#: What a block's output is read with: a reshape of the tensor it returns, or a `TupleOutput`.
BlockReshape = Reshape | TupleOutput


def with_reshape_transform(found: BlockReshape | None, given: BlockReshape) -> BlockReshape:
    """A user's ``reshape_transform`` in place of the reshape found for a block.

    For a block that returns a tuple (a found `TupleOutput`), ``given`` reshapes the tensor the
    tuple's feature map is (the grid each call says is no longer used), unless it is a
    `TupleOutput` itself.
    """
    if isinstance(found, TupleOutput) and not isinstance(given, TupleOutput):
        return TupleOutput(found.item, given)
    return given


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


#: Block types of other models and the reshape of their outputs to (N, C, H, W) (a `TupleOutput`
#: for a block that returns a tuple); add yours.
BLOCK_RESHAPES: dict[type[nn.Module], BlockReshape] = {}

_PATCHES = PatchTokens(prefix=0)

#: timm's block classes (``module.qualname``, matched exactly, so timm is never imported here)
#: and the reshape of their outputs; ``None`` (alone, or as a `TupleOutput`'s reshape): (N, T, D)
#: tokens led by the model's own extra tokens, a `PatchTokens` of the number the model
#: says (``num_prefix_tokens``), on the grid it says where it says one (``_TIMM_GRID``), the
#: square default of ``tokens_to_grid`` where it says none.
TIMM_BLOCKS: dict[str, BlockReshape | None] = {
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
    # tuples: TNT's (pixel tokens, patch tokens), its patch tokens led by the class token;
    # MViTv2's (tokens, grid size), on the grid its pooling attention left (a first block of a
    # stage pools inside; its output is on the pooled grid it returns)
    "timm.models.tnt.Block": TupleOutput(item=1),
    "timm.models.mvitv2.MultiScaleBlock": TupleOutput(item=0, grid_item=1),
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

#: How many extra tokens a model says lead its blocks' tokens: a number fixed by the model's code,
#: the dotted path of an attribute that holds it, or a tuple of these, summed.
_Count = int | str | tuple[int | str, ...]

#: timm models that say their number of leading extra tokens otherwise than ``num_prefix_tokens``.
_TIMM_PREFIX: dict[str, _Count] = {
    "timm.models.pit.PoolingVisionTransformer": "num_tokens",  # 2 when distilled
    "timm.models.crossvit.CrossVit": 1,  # one class token per branch
}

#: timm models whose patch grid is fixed when they are built, and the attribute that says it. Their
#: token blocks' reshapes take that grid: TNT (which refuses images of another size) embeds its
#: pixels with a convolution on each patch, so the last convolution's grid, which `PatchTokens`
#: would read otherwise, is the pixel grid inside a patch.
_TIMM_GRID: dict[str, str] = {
    "timm.models.tnt.TNT": "pixel_embed.grid_size",
}


def _unrolled(strides: object, size: object) -> UnrolledTokens | None:
    """The `UnrolledTokens` of Hiera tokens on a grid of ``size`` with ``strides`` left to undo.

    ``None`` for a size that is no 2-D grid (a 3-D, video, Hiera) or strides that are no pairs.
    """
    grid = _grid_pair(size) if len(size) == 2 else None  # type: ignore[arg-type]
    pairs = tuple(_grid_pair(stride) for stride in strides)  # type: ignore[attr-defined]
    if grid is None or any(pair is None for pair in pairs):
        return None
    return UnrolledTokens(pairs, grid)  # type: ignore[arg-type]


def _hiera_blocks(model: nn.Module) -> dict[int, BlockReshape]:
    """The blocks of a timm ``Hiera`` by ``id``, each with the `UnrolledTokens` of its output.

    For its block ``i``, Hiera's ``reroll.schedule[i]`` holds the unroll strides its pooling has
    not consumed yet and the grid of its tokens; `UnrolledTokens` undoes that order (timm's
    ``Reroll`` is not used). The blocks of a 3-D (video) Hiera, whose tokens make no 2-D grid,
    are left out.
    """
    schedule = getattr(getattr(model, "reroll", None), "schedule", None)
    blocks = getattr(model, "blocks", None)
    if not isinstance(schedule, Mapping) or not isinstance(blocks, nn.ModuleList):
        return {}
    found: dict[int, BlockReshape] = {}
    for index, block in enumerate(blocks):
        unrolled = _unrolled(*schedule.get(index, ((), ())))
        if unrolled is not None:
            found[id(block)] = unrolled
    return found


#: timm models whose blocks' token order only the model says, and the reshape of each of its
#: blocks' outputs (by ``id``): Hiera's blocks hold their tokens in mask-unit order.
_TIMM_MODEL_BLOCKS: dict[str, Callable[[nn.Module], dict[int, BlockReshape]]] = {
    "timm.models.hiera.Hiera": _hiera_blocks,
}

#: timm blocks that cannot be found soundly, and why; named when Integrative CAM refuses.
TIMM_REFUSED: dict[str, str] = {
    "timm.models.hiera.HieraBlock": (
        "Hiera's blocks hold their tokens in mask-unit order, which only a 2-D timm Hiera "
        "around them says (its reroll schedule): outside one their grid is unknown (pass their "
        "order as ctc_plugin.cam.transformers.UnrolledTokens(strides, grid))"
    ),
}

_HF = "transformers.models"
_HIERA_LAYER = f"{_HF}.hiera.modeling_hiera.HieraLayer"
_SWIN_LAYER = TupleOutput(0, _PATCHES, grid_arguments=("input_dimensions",))
_REDUCTION_LAYER = TupleOutput(0, _PATCHES, grid_arguments=("height", "width"))

#: Hugging Face ``transformers``' block classes (``module.qualname``, matched exactly, so
#: transformers is never imported here) and the reshape of their outputs, read as in
#: ``TIMM_BLOCKS``: ``None`` (alone, or as a `TupleOutput`'s reshape) is (N, T, D) tokens led by
#: as many extra tokens as the model around them says (``_HUGGINGFACE_PREFIX``), on the patch
#: embedding's grid. A layer that returns a tuple (its hidden states first, then what
#: ``output_attentions`` adds) is read by a `TupleOutput`; as of transformers 4.57.
HUGGINGFACE_BLOCKS: dict[str, BlockReshape | None] = {
    # ViT, DeiT, DINOv2 (with registers), I-JEPA, ViT MSN, SigLIP: tokens
    f"{_HF}.vit.modeling_vit.ViTLayer": None,
    f"{_HF}.deit.modeling_deit.DeiTLayer": None,
    f"{_HF}.dinov2.modeling_dinov2.Dinov2Layer": None,
    f"{_HF}.dinov2_with_registers.modeling_dinov2_with_registers.Dinov2WithRegistersLayer": None,
    f"{_HF}.ijepa.modeling_ijepa.IJepaLayer": None,
    f"{_HF}.vit_msn.modeling_vit_msn.ViTMSNLayer": None,
    f"{_HF}.siglip.modeling_siglip.SiglipEncoderLayer": None,
    # BEiT, Data2Vec vision, CLIP, MetaCLIP 2: (tokens, ...)
    f"{_HF}.beit.modeling_beit.BeitLayer": TupleOutput(0),
    f"{_HF}.data2vec.modeling_data2vec_vision.Data2VecVisionLayer": TupleOutput(0),
    f"{_HF}.clip.modeling_clip.CLIPEncoderLayer": TupleOutput(0),
    f"{_HF}.metaclip_2.modeling_metaclip_2.MetaClip2EncoderLayer": TupleOutput(0),
    # (tokens,) on the grid the layer is called with: Swin v1/v2 and Donut's Swin
    # (input_dimensions); PVT (height, width; its last stage's tokens are led by a class token,
    # PvtPatchEmbeddings.cls_token, the one token that does not fit that grid)
    f"{_HF}.swin.modeling_swin.SwinLayer": _SWIN_LAYER,
    f"{_HF}.swinv2.modeling_swinv2.Swinv2Layer": _SWIN_LAYER,
    f"{_HF}.donut.modeling_donut_swin.DonutSwinLayer": _SWIN_LAYER,
    f"{_HF}.pvt.modeling_pvt.PvtLayer": TupleOutput(
        0, tokens_to_grid, grid_arguments=("height", "width")
    ),
    # (tokens, ...) on the grid the layer is called with (height, width): PVT v2, SegFormer
    f"{_HF}.pvt_v2.modeling_pvt_v2.PvtV2BlockLayer": _REDUCTION_LAYER,
    f"{_HF}.segformer.modeling_segformer.SegformerLayer": _REDUCTION_LAYER,
    # (N, H*W, C) patch tokens alone: LeViT's residual layers (attention or MLP), EfficientFormer's
    # attention blocks ((tokens, ...), after its last pooling block's grid)
    f"{_HF}.levit.modeling_levit.LevitResidualLayer": _PATCHES,
    f"{_HF}.deprecated.efficientformer.modeling_efficientformer.EfficientFormerMeta3D": (
        TupleOutput(0, _PATCHES)
    ),
    # (N, C, H, W): EfficientFormer's pooling blocks; MobileViT v1/v2 blocks (their transformers,
    # on unfolded patches, inside) and their inverted residual blocks
    f"{_HF}.deprecated.efficientformer.modeling_efficientformer.EfficientFormerMeta4D": _identity,
    f"{_HF}.mobilevit.modeling_mobilevit.MobileViTLayer": _identity,
    f"{_HF}.mobilevit.modeling_mobilevit.MobileViTInvertedResidual": _identity,
    f"{_HF}.mobilevitv2.modeling_mobilevitv2.MobileViTV2Layer": _identity,
    f"{_HF}.mobilevitv2.modeling_mobilevitv2.MobileViTV2InvertedResidual": _identity,
}

#: Hugging Face models and how many extra tokens lead their blocks' tokens: a class token put
#: before the patches by their embeddings' code (DeiT's also a distillation token), DINOv2's
#: registers as many as its config says.
_HUGGINGFACE_PREFIX: dict[str, _Count] = {
    f"{_HF}.vit.modeling_vit.ViTModel": 1,
    f"{_HF}.deit.modeling_deit.DeiTModel": 2,
    f"{_HF}.beit.modeling_beit.BeitModel": 1,
    f"{_HF}.data2vec.modeling_data2vec_vision.Data2VecVisionModel": 1,
    f"{_HF}.dinov2.modeling_dinov2.Dinov2Model": 1,
    f"{_HF}.dinov2_with_registers.modeling_dinov2_with_registers.Dinov2WithRegistersModel": (
        1,
        "config.num_register_tokens",
    ),
    f"{_HF}.ijepa.modeling_ijepa.IJepaModel": 0,
    f"{_HF}.vit_msn.modeling_vit_msn.ViTMSNModel": 1,
    f"{_HF}.clip.modeling_clip.CLIPVisionTransformer": 1,
    f"{_HF}.metaclip_2.modeling_metaclip_2.MetaClip2VisionTransformer": 1,
    f"{_HF}.siglip.modeling_siglip.SiglipVisionTransformer": 0,
}

#: Hugging Face modules whose blocks hold no image tokens: CLIP's, MetaCLIP 2's and SigLIP's text
#: transformers (their layers are the vision transformers' classes), not searched.
_HUGGINGFACE_NOT_IMAGES = frozenset(
    {
        f"{_HF}.clip.modeling_clip.CLIPTextTransformer",
        f"{_HF}.metaclip_2.modeling_metaclip_2.MetaClip2TextTransformer",
        f"{_HF}.siglip.modeling_siglip.SiglipTextTransformer",
    }
)


def _huggingface_hiera_blocks(encoder: nn.Module) -> dict[int, BlockReshape]:
    """The layers of a Hugging Face ``HieraEncoder`` by ``id``, reading their tokens' order.

    A layer returns (tokens, attention). Every layer of stage ``i`` outputs tokens in the order
    ``schedule[i]`` says (the unroll strides left, the grid; the first layer of a stage pools);
    `UnrolledTokens` undoes it. The layers of a 3-D (video) Hiera are left out.
    """
    schedule = getattr(encoder, "schedule", None)
    stages = getattr(encoder, "stages", None)
    if not isinstance(schedule, Mapping) or not isinstance(stages, nn.ModuleList):
        return {}
    found: dict[int, BlockReshape] = {}
    for index, stage in enumerate(stages):
        unrolled = _unrolled(*schedule.get(index, ((), ())))
        layers = getattr(stage, "layers", None)
        if unrolled is not None and isinstance(layers, nn.ModuleList):
            found.update((id(layer), TupleOutput(0, unrolled)) for layer in layers)
    return found


#: Hugging Face models whose blocks' token order only the model says (see ``_TIMM_MODEL_BLOCKS``).
_HUGGINGFACE_MODEL_BLOCKS: dict[str, Callable[[nn.Module], dict[int, BlockReshape]]] = {
    f"{_HF}.hiera.modeling_hiera.HieraEncoder": _huggingface_hiera_blocks,
}

#: Hugging Face blocks that cannot be found soundly, and why; named when Integrative CAM refuses.
HUGGINGFACE_REFUSED: dict[str, str] = {
    _HIERA_LAYER: (
        "Hugging Face Hiera's layers hold their tokens in mask-unit order, which only the 2-D "
        "HieraEncoder around them says (its schedule): outside one their grid is unknown (pass "
        "layers=[...] and reshape_transform=ctc_plugin.cam.transformers.TupleOutput(0, "
        "UnrolledTokens(strides, grid)))"
    ),
}

#: Hugging Face classifiers whose head reads the leading tokens alone (the class token; DeiT's
#: teacher head also the distillation token): their last layer's patch tokens reach no score.
#: (BEiT's and Data2Vec vision's read the class token alone without mean pooling, but their
#: layers return tuples, whose first LayerNorm `grad_cam_layer` takes anyway.)
_HUGGINGFACE_TOKEN_HEADS = frozenset(
    {
        f"{_HF}.vit.modeling_vit.ViTForImageClassification",
        f"{_HF}.deit.modeling_deit.DeiTForImageClassification",
        f"{_HF}.deit.modeling_deit.DeiTForImageClassificationWithTeacher",
        f"{_HF}.vit_msn.modeling_vit_msn.ViTMSNForImageClassification",
    }
)

#: The attribute names of a ViT block's first LayerNorm (the one before its attention):
#: torchvision's, timm's, Hugging Face's (ViT, DeiT, BEiT, ...; CLIP, SigLIP).
_FIRST_NORMS = ("ln_1", "norm1", "layernorm_before", "layer_norm1")


@dataclass(frozen=True)
class _Library:
    """The tables of a library whose classes are matched by qualified name (never imported).

    Attributes:
        package: The library's top-level package; without it in ``sys.modules``, no class of it
            can be in a model, and its tables are skipped.
        blocks: Its block classes and their reshapes (``None``: tokens led by extra tokens).
        refused: Its block classes that cannot be found soundly, and why.
        prefix: Models that say how many extra tokens lead their blocks' tokens.
        grid: Models whose patch grid is fixed, and the attribute that says it.
        model_blocks: Models whose blocks' reshapes only they say, by block ``id``.
        alongside: Blocks that are stages only beside blocks of the other classes named.
        not_images: Modules whose blocks hold no image tokens, not searched.
    """

    package: str
    blocks: Mapping[str, BlockReshape | None]
    refused: Mapping[str, str]
    prefix: Mapping[str, _Count]
    grid: Mapping[str, str] = field(default_factory=dict)
    model_blocks: Mapping[str, Callable[[nn.Module], dict[int, BlockReshape]]] = field(
        default_factory=dict
    )
    alongside: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    not_images: frozenset[str] = frozenset()


_LIBRARIES = (
    _Library(
        "timm",
        TIMM_BLOCKS,
        TIMM_REFUSED,
        _TIMM_PREFIX,
        _TIMM_GRID,
        _TIMM_MODEL_BLOCKS,
        _TIMM_ALONGSIDE,
    ),
    _Library(
        "transformers",
        HUGGINGFACE_BLOCKS,
        HUGGINGFACE_REFUSED,
        _HUGGINGFACE_PREFIX,
        model_blocks=_HUGGINGFACE_MODEL_BLOCKS,
        not_images=_HUGGINGFACE_NOT_IMAGES,
    ),
)


def _qualified(module: nn.Module) -> str:
    kind = type(module)
    return f"{kind.__module__}.{kind.__qualname__}"


@dataclass(frozen=True)
class _Tables:
    """The tables of the libraries imported, merged, for one search of a model's blocks."""

    blocks: Mapping[str, BlockReshape | None] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)
    prefix: Mapping[str, _Count] = field(default_factory=dict)
    grid: Mapping[str, str] = field(default_factory=dict)
    model_blocks: Mapping[str, Callable[[nn.Module], dict[int, BlockReshape]]] = field(
        default_factory=dict
    )
    not_images: frozenset[str] = frozenset()


def _tables(model: nn.Module) -> _Tables:
    """The tables of the libraries imported, with the blocks found alongside others in ``model``.

    Empty without timm and transformers: no class of theirs can be in the model.
    """
    libraries = [library for library in _LIBRARIES if library.package in sys.modules]
    if not libraries:
        return _Tables()
    present = {_qualified(m) for m in model.modules()}
    blocks: dict[str, BlockReshape | None] = {}
    for library in libraries:
        blocks.update(library.blocks)
        blocks.update(
            (name, _identity)
            for name, others in library.alongside.items()
            if name in present and present.intersection(others)
        )
    return _Tables(
        blocks=blocks,
        refused={k: v for lib in libraries for k, v in lib.refused.items()},
        prefix={k: v for lib in libraries for k, v in lib.prefix.items()},
        grid={k: v for lib in libraries for k, v in lib.grid.items()},
        model_blocks={k: v for lib in libraries for k, v in lib.model_blocks.items()},
        not_images=frozenset().union(*(lib.not_images for lib in libraries)),
    )


def _attribute(module: nn.Module, path: str) -> object:
    """The attribute at the dotted ``path`` of ``module``, ``None`` where there is none."""
    value: object = module
    for name in path.split("."):
        value = getattr(value, name, None)
    return value


def _count(module: nn.Module, count: _Count) -> int | None:
    """The number ``count`` says for ``module`` (`_Count`), ``None`` where a part is no count."""
    total = 0
    for part in count if isinstance(count, tuple) else (count,):
        value = part if isinstance(part, int) else _attribute(module, part)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return None
        total += value
    return total


def _prefix_tokens(module: nn.Module, inherited: int | None, tables: _Tables) -> int | None:
    """The number of leading extra tokens ``module`` says its blocks hold, else ``inherited``."""
    said = _count(module, tables.prefix.get(_qualified(module), "num_prefix_tokens"))
    return inherited if said is None else said


@dataclass(frozen=True)
class _Said:
    """What the modules around a block say about its tokens.

    Attributes:
        prefix: The number of leading extra tokens (``num_prefix_tokens``, the prefix tables),
            if said.
        grid: The patch grid (``_TIMM_GRID``), if said.
        blocks: The reshape of each block (by ``id``) whose token order a model says
            (``_TIMM_MODEL_BLOCKS``, ``_HUGGINGFACE_MODEL_BLOCKS``).
    """

    prefix: int | None = None
    grid: tuple[int, int] | None = None
    blocks: Mapping[int, BlockReshape] = field(default_factory=dict)


def _said_by(module: nn.Module, said: _Said, tables: _Tables) -> _Said:
    """``said``, with what ``module`` says about the tokens of the blocks inside it."""
    name = _qualified(module)
    grid = said.grid
    if name in tables.grid:
        grid = _grid_pair(_attribute(module, tables.grid[name])) or grid
    blocks = said.blocks
    if name in tables.model_blocks:
        blocks = {**blocks, **tables.model_blocks[name](module)}
    return _Said(_prefix_tokens(module, said.prefix, tables), grid, blocks)


def _resolved(reshape: BlockReshape | None, said: _Said) -> BlockReshape:
    """A table entry with ``None`` (tokens led by the model's extra tokens) filled in."""
    if isinstance(reshape, TupleOutput):
        if reshape.reshape is not None:
            return reshape
        return replace(reshape, reshape=_resolved(None, said))
    if reshape is not None:
        return reshape
    if said.prefix is not None:
        return PatchTokens(said.prefix, said.grid)
    return tokens_to_grid if said.grid is None else partial(tokens_to_grid, grid=said.grid)


def _found_blocks(
    module: nn.Module,
    known: dict[type[nn.Module], BlockReshape],
    tables: _Tables,
    said: _Said,
    seen: set[int],
) -> Iterator[tuple[nn.Module, BlockReshape]]:
    """The known blocks in ``module`` in module order; a found block is not searched further."""
    if id(module) in seen:
        return
    seen.add(id(module))
    kind = type(module)
    if kind in known:
        yield module, known[kind]
        return
    if id(module) in said.blocks:
        yield module, said.blocks[id(module)]
        return
    name = _qualified(module)
    if name in tables.blocks:
        yield module, _resolved(tables.blocks[name], said)
        return
    if name in tables.not_images:
        return
    said = _said_by(module, said, tables)
    for child in module.children():
        yield from _found_blocks(child, known, tables, said, seen)


def transformer_stages(model: nn.Module) -> list[tuple[nn.Module, BlockReshape]]:
    """The transformer blocks of ``model``, in module order, each with its output's reshape.

    The known blocks: torchvision's ViT ``EncoderBlock``, Swin
    ``SwinTransformerBlock``/``SwinTransformerBlockV2``, MaxViT ``MaxVitLayer``, the types in
    [`BLOCK_RESHAPES`][ctc_plugin.cam.BLOCK_RESHAPES] (these first), timm's in ``TIMM_BLOCKS``:
    ViT and its variants (DeiT, DINOv2 with registers, CLIP, EVA, BEiT, PiT, CrossViT), CaiT,
    XCiT, Twins, PVT v2, Swin v1/v2, NesT, DaViT, GCViT, MaxViT, CoAtNet, TinyViT, LeViT,
    EfficientFormer v1/v2, EdgeNeXt, MobileViT v1/v2, Visformer, MLP-Mixer, ResMLP, gMLP, TNT
    (its patch tokens, picked out of the (pixel tokens, patch tokens) tuple its blocks return,
    on the patch grid the model says) and MViTv2 (the tokens of its blocks' (tokens, grid)
    tuples, on that grid); the blocks of timm's 2-D Hiera, their tokens put back from mask-unit
    order (`UnrolledTokens`); and Hugging Face's in ``HUGGINGFACE_BLOCKS``: ViT, DeiT, BEiT,
    Data2Vec vision, DINOv2 (with registers), I-JEPA, ViT MSN, CLIP, MetaCLIP 2 and SigLIP (their
    vision transformers), Swin v1/v2 and Donut's Swin, PVT (these two on the grid each layer is
    called with), LeViT, EfficientFormer, MobileViT v1/v2, and the layers of a 2-D Hiera
    (unrolled tokens, as timm's). A block inside a found block is not a stage of its own
    (MobileViT's transformer blocks, inside its MobileViT blocks). The leading extra tokens of
    ViT blocks are as many as the model says (timm's ``num_prefix_tokens``; for Hugging Face's,
    the class and distillation tokens their embeddings add, and ``config.num_register_tokens``).
    Empty for a model without known blocks.
    """
    known = {**_known_blocks(), **BLOCK_RESHAPES}
    return list(_found_blocks(model, known, _tables(model), _Said(), set()))


def refused_blocks(model: object) -> list[str]:
    """Why the blocks of ``model`` that cannot be found soundly are not.

    The reasons of ``TIMM_REFUSED`` and ``HUGGINGFACE_REFUSED``; only blocks that were not found
    count (a HieraBlock inside a timm Hiera is found). Empty for a plain function (no modules to
    read) and without timm and transformers.
    """
    if not isinstance(model, nn.Module):
        return []
    refused = _tables(model).refused
    if not refused:
        return []
    found = {id(block) for block, _ in transformer_stages(model)}
    reasons = {refused.get(_qualified(m)) for m in model.modules() if id(m) not in found}
    return sorted(reason for reason in reasons if reason is not None)


def _reads_leading_tokens_alone(head: nn.Module) -> bool | None:
    """Whether ``head``'s classifier reads its leading tokens alone; ``None``: ``head`` says not.

    timm's ViTs with ``global_pool="token"`` read the class token only; so do the Hugging Face
    classifiers in ``_HUGGINGFACE_TOKEN_HEADS``.
    """
    pool = getattr(head, "global_pool", None)
    if isinstance(pool, str):
        return pool == "token"
    return True if _qualified(head) in _HUGGINGFACE_TOKEN_HEADS else None


def _classifies_prefix_tokens(model: nn.Module, block: nn.Module) -> bool:
    """Whether the innermost classifier around ``block`` reads its leading tokens alone.

    Then the patch tokens ``block`` outputs reach no score (see `_reads_leading_tokens_alone`).
    """
    said = [
        reads
        for m in model.modules()
        if (reads := _reads_leading_tokens_alone(m)) is not None
        and any(b is block for b in m.modules())
    ]
    return bool(said) and said[-1]


def _first_norm(block: nn.Module) -> nn.Module | None:
    """The first LayerNorm of a ViT block (``_FIRST_NORMS``), ``None`` if it has none."""
    for name in _FIRST_NORMS:
        norm = getattr(block, name, None)
        if isinstance(norm, nn.LayerNorm):
            return norm
    return None


def _token_reshape(model: nn.Module, block: nn.Module, reshape: BlockReshape) -> Reshape | None:
    """The reshape of a ViT block's tokens, picked out of a `TupleOutput`; else ``None``.

    A ViT block's tokens are led by the model's extra tokens, on the patch embedding's grid
    (its table entry is ``None``, or a `TupleOutput` of ``None`` whose calls say no grid).
    """
    entry = _tables(model).blocks.get(_qualified(block), _identity)
    if isinstance(entry, TupleOutput) and entry.reshape is None and not entry.carries_grid:
        return reshape.reshape if isinstance(reshape, TupleOutput) else None
    return reshape if entry is None and not isinstance(reshape, TupleOutput) else None


def grad_cam_layer(model: nn.Module) -> tuple[nn.Module, Reshape | None]:
    """The layer Grad-CAM conventionally explains, with the reshape pytorch-grad-cam needs.

    A vision transformer's last block (see
    [`transformer_stages`][ctc_plugin.cam.transformer_stages]) with its token reshape; for a
    ViT that classifies its class token alone (torchvision's ``VisionTransformer``, timm's ViTs
    with ``global_pool="token"``: ViT, DeiT, DINOv2, CLIP, PiT, CrossViT; Hugging Face's ViT,
    DeiT, ViT MSN), the first LayerNorm of
    the last block (``ln_1``, timm's ``norm1``, Hugging Face's ``layernorm_before``), as
    pytorch-grad-cam's ViT tutorial does (``blocks[-1].norm1``): the patch tokens the last block
    outputs reach no score, so their gradient, and a Grad-CAM map of them, is zero. The first
    LayerNorm also for a ViT whose last block returns a tuple (Hugging Face's BEiT, Data2Vec
    vision, CLIP, MetaCLIP 2): pytorch-grad-cam hooks the tensor a layer returns, and that
    norm's tokens are on the block's grid. Otherwise the model's last ``nn.Conv2d`` and ``None``.
    The token reshapes assume square patch grids where the model says no grid, as
    pytorch-grad-cam's do (a `PatchTokens` refuses a patch count that is no square).

    Raises:
        ValueError: If the model has neither known transformer blocks nor a ``Conv2d``, or its
            last block returns a tuple and is no ViT block with a first LayerNorm (TNT, MViTv2,
            Hugging Face's Swin, Hiera, PVT, EfficientFormer): no submodule returns that
            block's feature map.
    """
    from torchvision.models.vision_transformer import VisionTransformer

    blocks = transformer_stages(model)
    if blocks:
        last, reshape = blocks[-1]
        # torchvision's ViT, bare or wrapped (a normalising nn.Sequential, say)
        if any(isinstance(m, VisionTransformer) for m in model.modules()):
            return last.ln_1, reshape
        tokens, norm = _token_reshape(model, last, reshape), _first_norm(last)
        tuple_output = isinstance(reshape, TupleOutput)
        if tokens is not None and norm is not None:
            if tuple_output or _classifies_prefix_tokens(model, last):
                return norm, tokens
        if tuple_output:
            raise ValueError(
                f"the last block of {type(model).__name__} ({_qualified(last)}) returns a tuple, "
                "and pytorch-grad-cam hooks the tensor a layer returns (no submodule returns "
                "this block's feature map); explain the model with IntegrativeCAM, which picks "
                "the feature map out of the tuple (ctc_plugin.cam.transformers.TupleOutput)"
            )
        return last, reshape
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise ValueError("the model has no Conv2d and no known transformer block for Grad-CAM")
    return convolutions[-1], None


__all__ = [
    "BLOCK_RESHAPES",
    "HUGGINGFACE_BLOCKS",
    "HUGGINGFACE_REFUSED",
    "TIMM_BLOCKS",
    "TIMM_REFUSED",
    "BlockReshape",
    "PatchTokens",
    "TupleOutput",
    "UnrolledTokens",
    "blocks_of_blocks_to_grid",
    "call_arguments",
    "channels_last_to_grid",
    "check_square_grid",
    "grad_cam_layer",
    "reads_patch_grid",
    "refused_blocks",
    "tokens_to_grid",
    "transformer_stages",
    "with_reshape_transform",
]
