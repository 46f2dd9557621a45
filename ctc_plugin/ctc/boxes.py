"""Boxes around the nonzero values of each copy: sparse copies and the ``"reference"`` packing.

A feature's copy is zero outside the receptive field of the feature, which in a network's first
layers is a small part of the image. The fused ``"reference"`` sharing
([`FusedReferenceSharing`][ctc_plugin.ctc.fused_sharing.FusedReferenceSharing]) computes its formula
only on boxes holding every nonzero value of a copy, found in each layer by
[`support_boxes`][ctc_plugin.ctc.boxes.support_boxes] (or carried by the sparse pass) and packed
into blocks of boxes of about one size ([`size_groups`][ctc_plugin.ctc.boxes.size_groups]),
whose size [`packed_volume`][ctc_plugin.ctc.boxes.packed_volume] gives.

A *box* is a tuple of slices along the spatial dims (the dims after the channel dim of a
propagated ``(N*C, channels, *spatial)`` tensor), or ``None`` for a copy without any nonzero
value; the boxes of a tensor are a list with one box per row.

Sparse copies ([`SparseGatedPass`][ctc_plugin.ctc.sparse.SparseGatedPass]) work on 2-d maps and
do integer arithmetic on their boxes (a convolution's reach, unions), so they carry a box as a
[`MapBox`][ctc_plugin.ctc.boxes.MapBox], four integers;
[`input_boxes`][ctc_plugin.ctc.boxes.input_boxes] reads them and
[`as_slices`][ctc_plugin.ctc.boxes.as_slices] turns one into a box of slices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


#: A box on a 2-d map: ``(first row, row stop, first column, column stop)``; empty where a stop
#: is not above its start.
MapBox = tuple[int, int, int, int]

#: The empty `MapBox`.
EMPTY: MapBox = (0, 0, 0, 0)


def input_boxes(x: torch.Tensor) -> list[MapBox]:
    """Each row's box around the values of a (B, channels, H, W) tensor that are nonzero."""
    return [
        EMPTY if box is None else (box[0].start, box[0].stop, box[1].start, box[1].stop)
        for box in support_boxes(x.unsqueeze(0), (3, 4))
    ]


def is_empty(box: MapBox) -> bool:
    """Whether a `MapBox` holds no position."""
    return box[1] <= box[0] or box[3] <= box[2]


def as_slices(box: MapBox) -> Box:
    """A `MapBox` as a box of slices (``None`` for an empty one)."""
    return None if is_empty(box) else (slice(box[0], box[1]), slice(box[2], box[3]))


def box_rows(boxes: Sequence[MapBox]) -> list[tuple[int, int]]:
    """Each box's map rows ``(first, stop)``; ``(0, 0)`` for an empty box."""
    return [(0, 0) if is_empty(box) else (box[0], box[1]) for box in boxes]


def union_box(a: MapBox, b: MapBox) -> MapBox:
    """The smallest box holding both (an empty box holds nothing)."""
    if is_empty(a):
        return b
    if is_empty(b):
        return a
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


#: Box sizes are rounded up to multiples of ``1 / SIZE_STEPS`` of the map, so that copies of
#: about the same size are computed together (sparse convolutions, the packed ``"reference"``
#: formula) at one size.
SIZE_STEPS = 8


def rounded_extent(extent: int, size: int, steps: int = SIZE_STEPS) -> int:
    """``extent`` rounded up to a multiple of ``ceil(size / steps)``, at most ``size``.

    ``size`` is the length of the map along that axis.
    """
    step = max(1, math.ceil(size / steps))
    return min(size, -(-extent // step) * step)


def size_groups(
    boxes: Sequence[Box], shape: Sequence[int], steps: int = SIZE_STEPS
) -> list[list[int]]:
    """Indices of the nonempty ``boxes`` on a map of ``shape``, grouped by rounded size.

    Two boxes are in one group when each of their extents rounds (`rounded_extent`) to the
    same size; groups come in the order of their first box.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, box in enumerate(boxes):
        if box is None:
            continue
        size = tuple(
            rounded_extent(part.stop - part.start, length, steps)
            for part, length in zip(box, shape)
        )
        groups.setdefault(size, []).append(index)
    return list(groups.values())


def largest_extents(boxes: Sequence[tuple[slice, ...]]) -> list[int]:
    """The largest extent of the nonempty ``boxes`` along each dim: the size they pack at."""
    extents = zip(*((part.stop - part.start for part in box) for box in boxes))
    return [max(extent) for extent in extents]


def packed_volume(boxes: Sequence[Box], groups: Sequence[Sequence[int]]) -> int:
    """Positions of the packed blocks of ``boxes``, one block per group at its largest size.

    ``groups``: lists of indices of nonempty boxes (`size_groups`), each packed apart.
    """
    volume = 0
    for group in groups:
        present = [boxes[index] for index in group]
        if present:
            volume += len(present) * math.prod(largest_extents(present))
    return volume


__all__ = [
    "EMPTY",
    "SIZE_STEPS",
    "Box",
    "MapBox",
    "as_slices",
    "box_rows",
    "input_boxes",
    "is_empty",
    "largest_extents",
    "packed_volume",
    "rounded_extent",
    "size_groups",
    "support_boxes",
    "union_box",
]
