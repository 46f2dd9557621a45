"""Sparse copies: convolutions computed only inside the box where each copy can be nonzero.

A feature's copy is zero outside its feature until the receptive field grows, so in the first
layers of a CNN (most of its pixels) every copy but the gate copy is zero on most of the map.
[`SparseGatedPass`][ctc_plugin.ctc.sparse.SparseGatedPass] computes each 2-d convolution of the
pass only inside each copy's *output box*: the rows and columns its nonzero input values can
reach through the kernel, stride, padding and dilation. Copies with boxes of about the same size
are cropped (with the zeros of the padding where a crop leaves the map), convolved as one batch
and scattered into a zero output. Where the boxes, at their groups' common sizes, cover more
than ``dense_above`` of the map, the layer is computed dense.

The boxes are read from the convolution's input itself (where it is nonzero), not carried from
the mask, so they are exact whatever the rules between two convolutions did: a copy that a bias
sharing made nonzero somewhere (the gate copy, ``"reference"``'s full copy, ``"none"``'s and
``"proportional"``'s equal split where every copy is zero) simply has a larger box. Values
outside a box are exact zeros in the dense pass as well (sums of zeros times finite weights),
so the results equal the dense pass up to the order of float additions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ctc_plugin.ctc.rules import GatedPass
from ctc_plugin.ctc.workspace import Workspace

#: The 2-d convolutions computed sparsely (``F.conv2d`` is ``torch.conv2d``).
SPARSE_FUNCTIONS = (torch.conv2d,)


@dataclass
class SparseGatedPass(GatedPass):
    """A [`GatedPass`][ctc_plugin.ctc.rules.GatedPass] whose 2-d convolutions skip zeros.

    Attributes:
        dense_above: Compute a convolution dense when the copies' boxes, padded to their
            groups' sizes, cover more than this fraction of its output; 1 or more computes
            every convolution sparse (as the tests do).
        size_steps: Box sizes are rounded up to multiples of ``1 / size_steps`` of the map, so
            copies of about the same size share one batched convolution.
        pointwise_dense_above: ``dense_above`` for 1x1 convolutions (when lower), whose few
            operations per value pay for the crops and the scatter only at smaller boxes
            (measured on ResNet-50's layers: sparse 1x1 convolutions broke even at boxes of
            about a third of the map, 3x3 ones at about a half).
        scratch: Memory for the crops, reused by every convolution of the pass.
    """

    dense_above: float = 0.6
    size_steps: int = 8
    pointwise_dense_above: float = 0.3
    scratch: Workspace = field(default_factory=Workspace, repr=False)

    def linear(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """As the spec, but a 2-d convolution of the copies is computed only in their boxes."""
        call = _conv_call(func, args, kwargs) if func in SPARSE_FUNCTIONS else None
        if call is None or call.x.shape[0] != self.layout.batch or self.copy_axis(call.x):
            return super().linear(func, args, kwargs)
        with torch.no_grad():
            dense_above = self.dense_above
            if call.kernel == (1, 1) and dense_above < 1:  # 1 and more: always sparse (tests)
                dense_above = min(dense_above, self.pointwise_dense_above)
            out = sparse_conv2d(call, dense_above, self.size_steps, self.scratch)
        return self.tag(out)


@dataclass(frozen=True)
class ConvCall:
    """The arguments of one ``conv2d`` call without bias, as integers per spatial axis."""

    x: torch.Tensor
    weight: torch.Tensor
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    @property
    def kernel(self) -> tuple[int, int]:
        """The kernel's height and width."""
        return (self.weight.shape[2], self.weight.shape[3])

    def output_size(self, axis: int) -> int:
        """The output's size along spatial axis 0 (rows) or 1 (columns)."""
        reach = self.dilation[axis] * (self.kernel[axis] - 1)
        size = self.x.shape[2 + axis] + 2 * self.padding[axis] - reach - 1
        return size // self.stride[axis] + 1

    def dense(self) -> torch.Tensor:
        """The convolution of the whole input, as the spec computes it."""
        return F.conv2d(
            self.x, self.weight, None, self.stride, self.padding, self.dilation, self.groups
        )


def _pair(value: Any) -> tuple[int, int] | None:
    """An int or a pair of ints as a pair; ``None`` for anything else (``"same"``)."""
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        if all(isinstance(v, int) for v in value):
            return (int(value[0]), int(value[1]))
    if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], int):
        return (value[0], value[0])
    return None


def _conv_call(func: Callable[..., Any], args: tuple, kwargs: dict) -> ConvCall | None:
    """The call as a `ConvCall`, or ``None`` where it is computed dense (unusual arguments)."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults = (None, None, None, 1, 0, 1, 1)
    values = dict(zip(names, defaults))
    values.update(zip(names, args))
    values.update(kwargs)
    x, weight = values["input"], values["weight"]
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        return None
    if values["bias"] is not None or x.dim() != 4 or weight.dim() != 4:
        return None
    if x.requires_grad or x.device.type != "cpu":  # the weight's gradient is never asked for
        return None
    pairs = [_pair(values[name]) for name in ("stride", "padding", "dilation")]
    if any(p is None for p in pairs) or not isinstance(values["groups"], int):
        return None
    return ConvCall(x, weight, *pairs, groups=values["groups"])  # type: ignore[misc, arg-type]


def _bounds(occupied: torch.Tensor) -> tuple[list[int], list[int]]:
    """First and one-past-last index of the True values along dim 1 (0, 0 where none)."""
    size = occupied.shape[1]
    positions = torch.arange(size, device=occupied.device)
    any_set = occupied.any(dim=1)
    first = torch.where(occupied, positions, size).amin(dim=1)
    last = torch.where(occupied, positions, -1).amax(dim=1) + 1
    first = torch.where(any_set, first, 0)
    last = torch.where(any_set, last, 0)
    return first.tolist(), last.tolist()


def _output_range(call: ConvCall, axis: int, start: int, stop: int) -> tuple[int, int]:
    """The output indices along ``axis`` that input indices ``[start, stop)`` can reach."""
    if stop <= start:
        return (0, 0)
    s, p = call.stride[axis], call.padding[axis]
    reach = call.dilation[axis] * (call.kernel[axis] - 1)
    low = max(0, -((p + reach - start) // s))  # ceil((start + p - reach) / s)
    high = min(call.output_size(axis), (stop - 1 + p) // s + 1)
    return (low, max(low, high))


def sparse_conv2d(
    call: ConvCall, dense_above: float, size_steps: int, scratch: Workspace | None = None
) -> torch.Tensor:
    """``conv2d`` of the copies computed only inside each copy's output box.

    Args:
        call: The convolution (no bias).
        dense_above: Compute dense when the padded boxes cover more than this fraction.
        size_steps: Box sizes are rounded up to multiples of ``1 / size_steps`` of the map.
        scratch: Memory to reuse for the crops (a fresh one when ``None``).
    """
    scratch = Workspace() if scratch is None else scratch
    x = call.x
    batch = x.shape[0]
    out_rows, out_cols = call.output_size(0), call.output_size(1)
    # where any channel is nonzero, (B, H, W); two reductions cost less than a full-size mask
    occupied = (x.amax(dim=1) != 0) | (x.amin(dim=1) != 0)
    row_first, row_stop = _bounds(occupied.any(dim=2))
    col_first, col_stop = _bounds(occupied.any(dim=1))
    steps = (max(1, math.ceil(out_rows / size_steps)), max(1, math.ceil(out_cols / size_steps)))
    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    volume = 0
    for copy in range(batch):
        r0, r1 = _output_range(call, 0, row_first[copy], row_stop[copy])
        c0, c1 = _output_range(call, 1, col_first[copy], col_stop[copy])
        if r1 <= r0 or c1 <= c0:
            continue  # the copy is zero: so is its output
        size = (
            min(out_rows, -(-(r1 - r0) // steps[0]) * steps[0]),
            min(out_cols, -(-(c1 - c0) // steps[1]) * steps[1]),
        )
        groups.setdefault(size, []).append(
            (copy, min(r0, out_rows - size[0]), min(c0, out_cols - size[1]))
        )
        volume += size[0] * size[1]
    if volume > dense_above * batch * out_rows * out_cols:
        return call.dense()
    out = x.new_zeros(batch, call.weight.shape[0], out_rows, out_cols)
    for (rows, cols), members in groups.items():
        if rows == out_rows and cols == out_cols:  # whole maps: no crop needed
            index = torch.tensor([m[0] for m in members])
            out[index] = F.conv2d(
                x[index], call.weight, None, call.stride, call.padding, call.dilation, call.groups
            )
            continue
        crops = _crops(call, members, rows, cols, scratch)
        result = F.conv2d(crops, call.weight, None, call.stride, 0, call.dilation, call.groups)
        for slot, (copy, r0, c0) in enumerate(members):
            out[copy, :, r0 : r0 + rows, c0 : c0 + cols] = result[slot]
    return out


def _crops(
    call: ConvCall, members: list[tuple[int, int, int]], rows: int, cols: int, scratch: Workspace
) -> torch.Tensor:
    """The input windows the output boxes read, zero where they leave the map (the padding)."""
    x = call.x
    in_rows = (rows - 1) * call.stride[0] + call.dilation[0] * (call.kernel[0] - 1) + 1
    in_cols = (cols - 1) * call.stride[1] + call.dilation[1] * (call.kernel[1] - 1) + 1
    shape = (len(members), x.shape[1], in_rows, in_cols)
    crops = scratch.buffers(x, count=1, slot="crops", shape=shape)[0].zero_()
    height, width = x.shape[2], x.shape[3]
    for slot, (copy, r0, c0) in enumerate(members):
        top = r0 * call.stride[0] - call.padding[0]  # the window's first input row
        left = c0 * call.stride[1] - call.padding[1]
        a0, a1 = max(0, top), min(height, top + in_rows)
        b0, b1 = max(0, left), min(width, left + in_cols)
        if a1 > a0 and b1 > b0:
            crops[slot, :, a0 - top : a1 - top, b0 - left : b1 - left] = x[copy, :, a0:a1, b0:b1]
    return crops


__all__ = ["ConvCall", "SparseGatedPass", "sparse_conv2d"]
