"""The reshapes of a vision transformer block's output to an (N, C, H, W) map.

A vision transformer has one convolution (its patch embedding); its feature maps are the token
maps its blocks output. As pytorch-grad-cam's ``reshape_transform`` does, each block's output
is turned into an (N, C, H, W) map by one of the reshapes here, which know no model (which block
takes which is in [`known_blocks`][ctc_plugin.cam.known_blocks]); `check_square_grid` checks a
reshape that guesses the patch grid against the image and the patch embedding (`at_call` fixes
it on the grid of each call of a block), and
`with_reshape_transform` puts a user's reshape in the place of the one found:

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
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial

from torch import Tensor, nn

#: A reshape of a block's output (and of its gradient) to an (N, C, H, W) map.
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
        raise ValueError(_not_tokens(tokens))
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


def _not_tokens(tokens: Tensor) -> str:
    """The refusal of a token reshape given something else; a 4-D map is told its reshape."""
    message = f"expected (N, tokens, channels) token maps, got {tuple(tokens.shape)}"
    if tokens.dim() == 4:
        message += (
            "; a 4-D map (N, H, W, C) is channels-last (Swin's blocks): pass "
            "reshape_transform=ctc_plugin.cam.channels_last_to_grid"
        )
    return message


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
            raise ValueError(_not_tokens(tokens))
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
            extra = int(tokens.shape[1]) - grid[0] * grid[1]
            advice = (
                f"if {grid[0]} x {grid[1]} is the model's patch grid, the tokens start with "
                f"{extra} extra tokens (class token, registers): PatchTokens(prefix={extra}, "
                f"grid={grid})"
                if self.grid is not None and extra >= 0
                else f"pass the model's patch grid, PatchTokens(prefix={self.prefix}, grid=(rows, "
                "columns)), or let Integrative CAM or grad_cam_layer(model, example=images) "
                "read the grid from the patch embedding"
            )
            raise ValueError(
                f"the {patches} patch tokens (after {self.prefix} leading tokens) do not fill a "
                f"{grid[0]} x {grid[1]} grid; {advice}"
            )
        return tokens_to_grid(tokens, grid)


def reads_patch_grid(reshape: BlockReshape | None) -> bool:
    """Whether ``reshape`` guesses or is told the patch grid, which the embedding's must check.

    True for [`tokens_to_grid`][ctc_plugin.cam.tokens_to_grid] itself (its square default) or
    told a grid (``functools.partial(tokens_to_grid, grid=...)``), a `PatchTokens`, and a
    `TupleOutput` reshaping its tensor with one of these (without a grid said by each call); see
    `check_square_grid`.
    """
    if isinstance(reshape, TupleOutput):
        return not reshape.carries_grid and reads_patch_grid(reshape.reshape)
    return (
        reshape is tokens_to_grid
        or isinstance(reshape, PatchTokens)
        or told_grid(reshape) is not None
    )


def told_grid(reshape: object) -> tuple[int, int] | None:
    """The patch grid a reshape is told; ``None`` for a reshape told none.

    ``PatchTokens(grid=...)``'s, or the ``grid=`` of ``functools.partial(tokens_to_grid, ...)``.
    """
    if isinstance(reshape, PatchTokens):
        grid = reshape.grid
    elif isinstance(reshape, partial) and reshape.func is tokens_to_grid:
        grid = reshape.keywords.get("grid")
    else:
        return None
    return _grid_pair(grid)  # None for a malformed one, which the reshape itself refuses


def _patch_tokens_on(
    reshape: PatchTokens, size: tuple[int, int], tokens: Tensor, seen: tuple[int, int] | None
) -> Reshape:
    """``reshape`` on the grid ``seen`` where it has as many cells as there are patches.

    Otherwise (patches merged or subsampled since, as in LeViT or PiT, or an attention's
    spatial-reduction convolution ran last, as in Twins) the square grid, which is right for a
    square image only: a non-square one is refused, and so are, for a square one, fewer patch
    tokens than the embedding made that make no square (tokens pruned on the way).
    """
    patches = reshape.patches(tokens)
    if seen is not None and seen[0] * seen[1] == patches:
        return replace(reshape, grid=(int(seen[0]), int(seen[1])))
    extra = int(tokens.shape[1]) - seen[0] * seen[1] if seen is not None else -1
    if (
        seen is not None
        and extra < 0
        and size[0] == size[1]
        and math.isqrt(patches) ** 2 != patches
    ):
        raise ValueError(
            f"the block's output holds {patches} patch tokens (after {reshape.prefix} leading "
            f"tokens), fewer than the {seen[0]} x {seen[1]} patches the patch embedding made, "
            "and no square: tokens were dropped on the way (token pruning, as in EViT or "
            "DynamicViT), so they have no place on a grid; leave out the blocks after the "
            "pruning: IntegrativeCAM(model, layers=[the blocks before it], reshape_transform="
            f"ctc_plugin.cam.PatchTokens(prefix={reshape.prefix}))"
        )
    if extra >= 0 and math.isqrt(patches) ** 2 != patches:  # the square guess fails too
        raise ValueError(
            f"the {tokens.shape[1]} tokens are the {seen[0]} x {seen[1]} patches the patch "
            f"embedding made and {extra} leading tokens (class token, registers), not "
            f"{reshape.prefix}: pass reshape_transform=ctc_plugin.cam."
            f"PatchTokens(prefix={extra})"
        )
    if size[0] != size[1]:
        raise ValueError(
            f"the input is {size[0]} x {size[1]} pixels, and the {patches} patch tokens of "
            f"shape {tuple(tokens.shape)} do not fill the grid the patch embedding made "
            f"({seen}: the output of the last convolution, or the grid a known embedding's call "
            "says): their grid is unknown; pass reshape_transform=ctc_plugin.cam."
            f"PatchTokens(prefix={reshape.prefix}, grid=(rows, columns))"
        )
    return reshape


def _square_default_on(tokens: Tensor, seen: tuple[int, int] | None) -> Reshape:
    """``tokens_to_grid``'s square default where its guess is the grid ``seen`` (or none is)."""
    if tokens.dim() != 3:
        return tokens_to_grid  # which refuses them, saying what it takes
    side = math.isqrt(int(tokens.shape[1]))
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
    return tokens_to_grid


@dataclass(frozen=True)
class _OnThePatchGrid:
    """A reshape whose patch grid is checked against, or taken from, the patch embedding's.

    ``patch_grid()`` is the output size of the last convolution that ran. `fixed` reads it
    when a block has returned, and gives the reshape on that grid; the stage keeps that
    reshape for the block's output and, in the backward pass, its gradient, since the
    convolutions that run after the block (a PiT's pooling, a convolutional head) leave other
    grids. Called directly, it does both at once.

    Attributes:
        reshape: A `PatchTokens` without a grid, or ``None`` for ``tokens_to_grid``'s square
            default.
        size: The image's (H, W).
        patch_grid: The grid of the last convolution that ran, ``None`` if none did.
    """

    reshape: PatchTokens | None
    size: tuple[int, int]
    patch_grid: Callable[[], tuple[int, int] | None] | None

    def fixed(self, tokens: Tensor) -> Reshape:
        """The reshape of ``tokens`` (and of their gradient) on the grid seen now.

        Raises:
            ValueError: Where the grid seen now does not fit the guess (see
                `check_square_grid`).
        """
        seen = self.patch_grid() if self.patch_grid is not None else None
        if self.reshape is None:
            return _square_default_on(tokens, seen)
        return _patch_tokens_on(self.reshape, self.size, tokens, seen)

    def __call__(self, tokens: Tensor) -> Tensor:
        """``tokens`` on the grid seen now, (N, C, rows, columns)."""
        return self.fixed(tokens)(tokens)


@dataclass(frozen=True)
class _ToldGrid:
    """A reshape told its patch grid, checked against the patch embedding's at each call.

    A grid told by hand can contradict the model: rows and columns swapped (``grid=(4, 2)`` for
    a 2 x 4 grid), another factorisation of the patch count, or fewer cells than there are
    patches (the reshape would drop the first patches as if they were extra tokens). Each puts
    patches in the wrong cells of every map without an error. `fixed` refuses a told grid that
    differs from the grid seen (the output size of the last convolution that ran) and has as
    many cells, or fewer cells than the seen grid while the tokens hold the seen grid; a told
    grid with more cells than the seen one is left alone (patches merged or subsampled since,
    or an attention's own spatial-reduction convolution ran last).

    Attributes:
        reshape: The reshape as given.
        grid: The grid it is told.
        patch_grid: The grid of the last convolution that ran, ``None`` if none did.
    """

    reshape: Reshape
    grid: tuple[int, int]
    patch_grid: Callable[[], tuple[int, int] | None] | None

    def fixed(self, tokens: Tensor) -> Reshape:
        """The reshape as given, after its grid was checked against the grid seen now.

        Raises:
            ValueError: Where the told grid contradicts the patch embedding's (see above).
        """
        seen = self.patch_grid() if self.patch_grid is not None else None
        if seen is None or tuple(seen) == self.grid or tokens.dim() != 3:
            return self.reshape
        told_cells, seen_cells = self.grid[0] * self.grid[1], seen[0] * seen[1]
        if told_cells == seen_cells or told_cells < seen_cells <= tokens.shape[1]:
            how = "as many patches" if told_cells == seen_cells else f"{seen_cells} patches"
            raise ValueError(
                f"the reshape is told a {self.grid[0]} x {self.grid[1]} patch grid, but the "
                f"model's patch embedding made a {seen[0]} x {seen[1]} grid of {how} (tokens "
                f"of shape {tuple(tokens.shape)}): the maps would put patches in the wrong "
                f"places; pass grid=({seen[0]}, {seen[1]})"
            )
        return self.reshape

    def __call__(self, tokens: Tensor) -> Tensor:
        """``tokens`` on the told grid, (N, C, rows, columns), once it was checked."""
        return self.fixed(tokens)(tokens)


def at_call(reshape: Reshape, tokens: Tensor) -> Reshape:
    """The reshape to keep for one call of a block that returned ``tokens``.

    A reshape `check_square_grid` returned reads the patch grid of the convolution that ran
    last: it is fixed on (or checked against) the grid seen at the block's call (see
    `_OnThePatchGrid` and `_ToldGrid`). Any other reshape is returned as it is.
    """
    return reshape.fixed(tokens) if isinstance(reshape, (_OnThePatchGrid, _ToldGrid)) else reshape


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
    `TupleOutput` whose calls do not say the grid has its own reshape checked so. A reshape
    told its grid (``functools.partial(tokens_to_grid, grid=...)``, ``PatchTokens(grid=...)``)
    is checked against ``patch_grid()`` at each call (see `_ToldGrid`).

    The returned reshape reads ``patch_grid()`` when it is called; `at_call` fixes it on the
    grid seen when a block returns, for that call's output and its gradient (the convolutions
    that run later, a PiT's pooling or a convolutional head, leave other grids).

    Raises:
        ValueError: Naming the grid argument to pass (the returned reshape raises it during the
            pass, before any map is made of the wrong tokens).
    """
    if isinstance(reshape, TupleOutput):
        if reshape.carries_grid:  # each call says the grid
            return reshape
        return replace(reshape, reshape=check_square_grid(reshape.reshape, size, patch_grid))
    if isinstance(reshape, PatchTokens) and reshape.grid is None:
        return _OnThePatchGrid(reshape, size, patch_grid)
    told = told_grid(reshape)
    if told is not None:
        return _ToldGrid(reshape, told, patch_grid)
    if reshape is not tokens_to_grid:
        return reshape
    if size[0] != size[1]:
        raise ValueError(
            f"the input is {size[0]} x {size[1]} pixels, but tokens_to_grid assumes a square "
            "patch grid and would put the wrong tokens on it; pass reshape_transform="
            "functools.partial(ctc_plugin.cam.tokens_to_grid, grid=(rows, columns)) with the "
            "model's patch grid, if the model takes images of this shape (torchvision's ViT "
            "and the zoo's take square images of their training size only: resize the image "
            "to it)"
        )
    return _OnThePatchGrid(None, size, patch_grid)


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


__all__ = [
    "BlockReshape",
    "PatchTokens",
    "Reshape",
    "TupleOutput",
    "UnrolledTokens",
    "at_call",
    "blocks_of_blocks_to_grid",
    "call_arguments",
    "channels_last_to_grid",
    "check_square_grid",
    "reads_patch_grid",
    "tokens_to_grid",
    "with_reshape_transform",
]
