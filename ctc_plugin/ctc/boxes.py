"""Boxes around the nonzero values of each copy, found once and carried through the pass.

A feature's copy is zero outside the receptive field of the feature, which in a network's first
layers is a small part of the image. The ``"reference"`` sharing computes its formula only on boxes
holding every nonzero value of a copy
([`ReferenceSharing`][ctc_plugin.ctc.sharing.ReferenceSharing]). Instead of searching each layer for
them, the boxes of the input copies are found once
([`support_boxes`][ctc_plugin.ctc.boxes.support_boxes]) and carried from layer to layer: a window
operation (convolution, pooling) widens a box to the outputs whose window meets it
([`window_boxes`][ctc_plugin.ctc.boxes.window_boxes]), elementwise gates and the bias shares keep it
(the shares are 0 where a copy is 0), a sum of two copies takes the smallest box around both
([`union_boxes`][ctc_plugin.ctc.boxes.union_boxes]). Every carried box holds all of its copy's
nonzero values, and perhaps some zeros, which the formula ignores. Operations without a rule here
drop the boxes; the sharing then searches the layer as before.

A *box* is a tuple of slices along the spatial dims (the dims after the channel dim of a
propagated ``(N*C, channels, *spatial)`` tensor), or ``None`` for a copy without any nonzero
value; the boxes of a tensor are a list with one box per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Box = tuple[slice, ...] | None


#: Signed integer dtypes by element size, to read floating-point values as their bits.
_SAME_SIZE_INTEGER = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def support_boxes(copies: torch.Tensor, dims: tuple[int, ...]) -> list[Box]:
    """For each copy, the smallest box along ``dims`` that holds all its nonzero values.

    Args:
        copies: (1, S, C, *spatial) values of S copies of one example.
        dims: The spatial dims (the trailing ones, after the channel dim 2).

    Returns:
        One tuple of slices along ``dims`` per copy, ``None`` for a copy without any nonzero
        value.
    """
    # A position is occupied when some channel is nonzero there. On the values' bits read as
    # signed integers (several times faster to reduce than floats), a positive value is a
    # positive integer and a negative one a negative integer, so the maximum over channels is
    # positive or the minimum negative; -0.0 counts as occupied, which only widens a box. (A
    # sum over channels could cancel.)
    bits = copies.view(_SAME_SIZE_INTEGER[copies.element_size()])
    occupied = (bits.amax(dim=2) > 0) | (bits.amin(dim=2) < 0)  # (1, S, *spatial)
    occupied = occupied[0]
    firsts, lasts = [], []
    for axis in range(1, occupied.dim()):
        others = tuple(a for a in range(1, occupied.dim()) if a != axis)
        present = occupied.any(dim=others) if others else occupied  # (S, size)
        positions = torch.arange(present.shape[1], device=present.device)
        firsts.append(torch.where(present, positions, present.shape[1]).amin(dim=1))
        lasts.append(torch.where(present, positions, -1).amax(dim=1))
    starts = torch.stack(firsts, 1).tolist()
    stops = (torch.stack(lasts, 1) + 1).tolist()
    return [
        tuple(slice(a, b) for a, b in zip(start, stop)) if stop[0] > 0 else None
        for start, stop in zip(starts, stops)
    ]


def batch_boxes(batch: torch.Tensor, copies: int) -> list[Box] | None:
    """The boxes of every row of a flat ``(N*C, channels, *spatial)`` batch of copies.

    ``None`` for a tensor without spatial dims (nothing to box).
    """
    if batch.dim() < 3:
        return None
    grouped = batch.unflatten(0, (-1, copies))
    dims = tuple(range(3, grouped.dim()))
    return [box for n in range(grouped.shape[0]) for box in support_boxes(grouped[n : n + 1], dims)]


@dataclass(frozen=True)
class Window:
    """A sliding window along each spatial dim (of a convolution or a pooling).

    Output ``o`` along a dim reads the inputs ``o * stride - padding + dilation * i`` for
    ``i`` in ``0 .. kernel - 1``.
    """

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]

    @classmethod
    def of(
        cls,
        kernel: int | tuple[int, ...],
        stride: int | tuple[int, ...] | None,
        padding: int | str | tuple[int, ...],
        dilation: int | tuple[int, ...],
        spatial: int,
    ) -> Window | None:
        """Normalise a torch operation's window arguments; ``None`` where they do not fit.

        ``stride=None`` (pooling) means the kernel size; ``padding="valid"`` is 0 and
        ``padding="same"`` pads ``dilation * (kernel - 1) // 2`` before the first input.
        """

        def per_dim(value: object) -> tuple[int, ...] | None:
            values = (value,) * spatial if isinstance(value, int) else tuple(value)  # type: ignore[arg-type]
            if len(values) == 1:
                values = values * spatial
            if len(values) != spatial or not all(isinstance(v, int) for v in values):
                return None
            return values

        kernels = per_dim(kernel)
        dilations = per_dim(dilation)
        strides = kernels if stride is None or stride == [] else per_dim(stride)
        if kernels is None or dilations is None or strides is None:
            return None
        if padding == "valid":
            paddings: tuple[int, ...] | None = (0,) * spatial
        elif padding == "same":
            paddings = tuple(d * (k - 1) // 2 for k, d in zip(kernels, dilations))
        elif isinstance(padding, str):
            return None
        else:
            paddings = per_dim(padding)
        if paddings is None:
            return None
        return cls(kernels, strides, paddings, dilations)


def window_boxes(boxes: list[Box], window: Window, output_sizes: tuple[int, ...]) -> list[Box]:
    """The boxes of a window operation's output: every output whose window meets the box."""

    def widen(box: Box) -> Box:
        if box is None:
            return None
        out = []
        for part, k, s, p, d, size in zip(
            box, window.kernel, window.stride, window.padding, window.dilation, output_sizes
        ):
            # output o reads inputs o*s - p .. o*s - p + d*(k-1); it meets [start, stop - 1] for
            # ceil((start + p - d*(k-1)) / s) <= o <= floor((stop - 1 + p) / s)
            first = max(0, -((-(part.start + p - d * (k - 1))) // s))
            last = min(size - 1, (part.stop - 1 + p) // s)
            if first > last:
                return None
            out.append(slice(first, last + 1))
        return tuple(out)

    return [widen(box) for box in boxes]


def union_boxes(first: list[Box], second: list[Box]) -> list[Box]:
    """Row by row, the smallest box around both boxes."""

    def union(a: Box, b: Box) -> Box:
        if a is None or b is None:
            return b if a is None else a
        return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))

    return [union(a, b) for a, b in zip(first, second)]


def packed_volume(boxes: list[Box]) -> int:
    """Positions of the packed block of the nonempty boxes (each at the largest box's size)."""
    present = [box for box in boxes if box is not None]
    if not present:
        return 0
    sizes = [max(box[a].stop - box[a].start for box in present) for a in range(len(present[0]))]
    return len(present) * math.prod(sizes)


__all__ = [
    "Box",
    "Window",
    "batch_boxes",
    "packed_volume",
    "support_boxes",
    "union_boxes",
    "window_boxes",
]
