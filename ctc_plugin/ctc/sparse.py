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

The boxes a convolution finds are *carried* on its output (with the tensor's version counter, so
that an in-place change the pass did not make drops them) through the rules that keep each copy's
zeros: BatchNorm's scale, the bias sharing (widened where ``"proportional"`` splits a bias among
copies that are all zero), ReLU gates and sums of two propagated tensors (the union of their
boxes). The next convolution reads them instead of scanning its input (two reductions over the
whole tensor); any other operation drops them, and the next convolution scans again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ctc_plugin.ctc.boxes import support_boxes
from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.rules import FOLD_ATTRIBUTE, GatedPass
from ctc_plugin.ctc.workspace import OutputPool, Workspace

#: The 2-d convolutions computed sparsely (``F.conv2d`` is ``torch.conv2d``).
SPARSE_FUNCTIONS = (torch.conv2d,)

#: Sums and differences of two propagated tensors: their result's boxes are the union.
SUM_FUNCTIONS = frozenset(
    {
        torch.add,
        torch.sub,
        torch.Tensor.add,
        torch.Tensor.add_,
        torch.Tensor.sub,
        torch.Tensor.sub_,
        torch.Tensor.__add__,
        torch.Tensor.__radd__,
        torch.Tensor.__iadd__,
        torch.Tensor.__sub__,
        torch.Tensor.__isub__,
    }
)

#: Attribute of a propagated 4-d tensor holding its `CarriedBoxes`.
BOXES_ATTRIBUTE = "_ctc_boxes"

#: A box of one copy: ``(first row, row stop, first column, column stop)``; empty where a stop
#: is not above its start. The copy is zero outside it.
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class CarriedBoxes:
    """Boxes outside which each row (copy) of a (N*C, channels, H, W) tensor is zero.

    Attributes:
        boxes: One `Box` per row.
        size: The map's ``(H, W)`` when they were set.
        version: The tensor's version counter when they were set: any later in-place change
            (through a view too) makes them stale, and they are ignored.
    """

    boxes: tuple[Box, ...]
    size: tuple[int, int]
    version: int


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
        results: Memory for the convolutions' and BatchNorms' results, reused once the model
            no longer holds them.
    """

    dense_above: float = 0.6
    size_steps: int = 8
    pointwise_dense_above: float = 0.3
    scratch: Workspace = field(default_factory=Workspace, repr=False)
    results: OutputPool = field(default_factory=OutputPool, repr=False)

    # ------------------------------------------------------------------ carried boxes
    def tag(self, tensor: torch.Tensor, axis: int = 0) -> torch.Tensor:
        """As the spec; an operation's result carries no boxes until a rule here sets them."""
        tensor = super().tag(tensor, axis)
        if hasattr(tensor, BOXES_ATTRIBUTE):
            delattr(tensor, BOXES_ATTRIBUTE)
        return tensor

    def boxes(self, x: Any) -> tuple[Box, ...] | None:
        """The boxes ``x`` carries, or ``None`` where it carries none that still hold."""
        carried = getattr(x, BOXES_ATTRIBUTE, None)
        if carried is None or not self.is_propagated(x) or self.copy_axis(x):
            return None
        if x.dim() != 4 or x.shape[0] != self.layout.batch or x.requires_grad:
            return None
        if x._version != carried.version or tuple(x.shape[2:]) != carried.size:
            return None
        return carried.boxes

    def carry(self, x: torch.Tensor, boxes: tuple[Box, ...] | list[Box] | None) -> torch.Tensor:
        """Record that each row of ``x`` is zero outside its box (``None``: no boxes); return it."""
        if boxes is not None and x.dim() == 4 and x.shape[0] == self.layout.batch:
            carried = CarriedBoxes(tuple(boxes), (x.shape[2], x.shape[3]), x._version)
            setattr(x, BOXES_ATTRIBUTE, carried)
        return x

    # ------------------------------------------------------------------ rules
    def linear(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """As the spec, but a 2-d convolution of the copies is computed only in their boxes.

        A sum of two propagated tensors carries the union of their boxes.
        """
        if func in SUM_FUNCTIONS:
            return self._sum(func, args, kwargs)
        call = _conv_call(func, args, kwargs) if func in SPARSE_FUNCTIONS else None
        if call is None or call.x.shape[0] != self.layout.batch or self.copy_axis(call.x):
            return super().linear(func, args, kwargs)
        with torch.no_grad():
            dense_above = self.dense_above
            if call.kernel == (1, 1) and dense_above < 1:  # 1 and more: always sparse (tests)
                dense_above = min(dense_above, self.pointwise_dense_above)
            boxes = self.boxes(call.x)
            if boxes is None:  # scan once; the input's other readers (a residual) keep them
                boxes = input_boxes(call.x)
                self.carry(call.x, boxes)
            out, boxes = sparse_conv2d(
                call, dense_above, self.size_steps, self.scratch, boxes, self.results
            )
        return self.carry(self.tag(out), boxes)

    def _sum(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """A sum or difference of two propagated tensors, with the union of their boxes."""
        first = args[0] if args else kwargs.get("input")
        second = args[1] if len(args) > 1 else kwargs.get("other")
        boxes = _union(self.boxes(first), self.boxes(second))
        out = super().linear(func, args, kwargs)
        if isinstance(out, torch.Tensor) and first is not None and out.shape == first.shape:
            self.carry(out, boxes)
        return out

    def fold_batch_norm(
        self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
    ) -> torch.Tensor:
        """As the spec; ``x * scale`` (in reused memory) keeps ``x``'s boxes for the sharing."""
        boxes = self.boxes(x)
        if boxes is None or hasattr(x, FOLD_ATTRIBUTE) or scale.dtype != x.dtype:
            return super().fold_batch_norm(x, scale, shift)
        with torch.no_grad():
            scaled = torch.mul(x, scale, out=self.results.empty(tuple(x.shape), x))
        return self.affine(self.carry(self.tag(scaled), boxes), shift)

    def affine(
        self, bias_free: torch.Tensor, bias: torch.Tensor | None, foldable: bool = False
    ) -> torch.Tensor:
        """As the spec; the result keeps the carried boxes where the sharing keeps the zeros.

        No sharing gives a feature's copy a share where it is zero, except ``"proportional"``
        where every sharing copy is zero (its
        [`add_bias_with_boxes`][ctc_plugin.ctc.speedups.FusedProportionalSharing.add_bias_with_boxes]
        says where); the other copies (the gate copy gets the whole bias) may be nonzero
        anywhere.
        """
        boxes = self.boxes(bias_free)
        if bias is None:
            return self.carry(super().affine(bias_free, bias, foldable), boxes)
        if boxes is None or foldable:
            return super().affine(bias_free, bias, foldable)
        with_boxes = getattr(self.sharing, "add_bias_with_boxes", None)
        if with_boxes is not None and bias.dim() < bias_free.dim():
            grouped = self.layout.group(bias_free)
            boxes = with_boxes(grouped, bias.to(bias_free.dtype), self.layout, boxes)
            return self.carry(self.tag(bias_free), boxes)
        out = super().affine(bias_free, bias, foldable)
        if self.sharing.name == "reference":  # no share where a feature's copy is zero
            self.carry(out, whole_outside_features(boxes, self.layout, out.shape[2:]))
        return out

    def relu_gate(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """As the spec; the result keeps ``x``'s boxes (a gate keeps every zero)."""
        boxes = self.boxes(x)
        return self.carry(super().relu_gate(x, inplace), boxes)


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


def _output_range(call: ConvCall, axis: int, start: int, stop: int) -> tuple[int, int]:
    """The output indices along ``axis`` that input indices ``[start, stop)`` can reach."""
    if stop <= start:
        return (0, 0)
    s, p = call.stride[axis], call.padding[axis]
    reach = call.dilation[axis] * (call.kernel[axis] - 1)
    low = max(0, -((reach - p - start) // s))  # ceil((start + p - reach) / s)
    high = min(call.output_size(axis), (stop - 1 + p) // s + 1)
    return (low, max(low, high))


def input_boxes(x: torch.Tensor) -> list[Box]:
    """Each row's box around the values of a (B, channels, H, W) tensor that are nonzero."""
    empty = (0, 0, 0, 0)
    return [
        empty if box is None else (box[0].start, box[0].stop, box[1].start, box[1].stop)
        for box in support_boxes(x.unsqueeze(0), (3, 4))
    ]


def union_box(a: Box, b: Box) -> Box:
    """The smallest box holding both (an empty box holds nothing)."""
    if a[1] <= a[0] or a[3] <= a[2]:
        return b
    if b[1] <= b[0] or b[3] <= b[2]:
        return a
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _union(first: tuple[Box, ...] | None, second: tuple[Box, ...] | None) -> list[Box] | None:
    """Row by row, the smallest boxes holding both (``None`` when either is unknown)."""
    if first is None or second is None or len(first) != len(second):
        return None
    return [union_box(a, b) for a, b in zip(first, second)]


def whole_outside_features(
    boxes: Sequence[Box], layout: CopyLayout, size: Sequence[int]
) -> list[Box]:
    """``boxes`` with every copy that is not a feature's on the whole map.

    The gate copy gets each bias whole; ``"reference"``'s full copy and a baseline copy are
    not zero outside a feature either.
    """
    whole = (0, int(size[0]), 0, int(size[1]))
    first, stop = layout.first_feature, layout.first_feature + layout.features
    return [box if first <= row % layout.copies < stop else whole for row, box in enumerate(boxes)]


def sparse_conv2d(
    call: ConvCall,
    dense_above: float,
    size_steps: int,
    scratch: Workspace | None = None,
    boxes: tuple[Box, ...] | list[Box] | None = None,
    results: OutputPool | None = None,
) -> tuple[torch.Tensor, list[Box]]:
    """``conv2d`` of the copies computed only inside each copy's output box.

    Args:
        call: The convolution (no bias).
        dense_above: Compute dense when the padded boxes cover more than this fraction.
        size_steps: Box sizes are rounded up to multiples of ``1 / size_steps`` of the map.
        scratch: Memory to reuse for the crops (a fresh one when ``None``).
        boxes: Boxes of the input's rows outside which they are zero (read from the input
            when ``None``).
        results: Memory for the output (fresh memory when ``None``).

    Returns:
        The output, and the boxes of its rows outside which they are zero.
    """
    scratch = Workspace() if scratch is None else scratch
    x = call.x
    batch = x.shape[0]
    out_rows, out_cols = call.output_size(0), call.output_size(1)
    boxes = input_boxes(x) if boxes is None else boxes
    steps = (max(1, math.ceil(out_rows / size_steps)), max(1, math.ceil(out_cols / size_steps)))
    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    out_boxes: list[Box] = []
    volume = 0
    for copy, (first_row, row_stop, first_col, col_stop) in enumerate(boxes):
        r0, r1 = _output_range(call, 0, first_row, row_stop)
        c0, c1 = _output_range(call, 1, first_col, col_stop)
        out_boxes.append((r0, r1, c0, c1))
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
        return call.dense(), out_boxes
    shape = (batch, call.weight.shape[0], out_rows, out_cols)
    out = x.new_zeros(shape) if results is None else results.empty(shape, x).zero_()
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
    return out, out_boxes


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


__all__ = ["CarriedBoxes", "ConvCall", "SparseGatedPass", "input_boxes", "sparse_conv2d"]
