"""The fused bias sharing: the spec's sharing computed in place, blockwise, on scratch buffers.

The implementations [`Speedups`][ctc_plugin.ctc.speedups.Speedups] chooses with
``fused_sharing`` (its ``sharing`` method builds them): `FusedNoSharing`,
`FusedProportionalSharing` and `FusedReferenceSharing`, each held equal to its mode of
[`ctc_plugin.ctc.sharing`][ctc_plugin.ctc.sharing] by the tests. They work in place on the
pre-activations, on a CPU in cache-sized blocks, on reusable scratch buffers
([`Workspace`][ctc_plugin.ctc.workspace.Workspace]), and with ``packed_boxes`` and
``proportional_rows`` only where the copies can be nonzero; ``"reference"``'s formula may run
as a compiled loop nest ([`native`][ctc_plugin.ctc.native]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ctc_plugin.ctc import native
from ctc_plugin.ctc.boxes import (
    Box,
    MapBox,
    as_slices,
    box_rows,
    largest_extents,
    packed_volume,
    size_groups,
    support_boxes,
    union_box,
)
from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.rules import checks_host
from ctc_plugin.ctc.sharing import (
    copy_part,
    equal_weights,
    formula_dtype,
    statistic_dims,
    statistics_dtype,
)
from ctc_plugin.ctc.sharing import spread_mean as spread_mean_of  # a local name is spread_mean
from ctc_plugin.ctc.sparse import whole_outside_features
from ctc_plugin.ctc.workspace import RowRange, Workspace, row_runs


class FusedNoSharing:
    """``"none"``, in place: the bias is added to the gate copy only."""

    name = "none"
    in_place = True

    def add_bias(self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout) -> torch.Tensor:
        """Add the bias to the gate copy in place; return ``z``."""
        z[:, :1].add_(copy_part(bias, z, 0, 1))
        return z

    def add_bias_with_boxes(
        self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout, boxes: Sequence[MapBox]
    ) -> list[MapBox]:
        """`add_bias` for (N, C, channels, H, W) copies zero outside ``boxes`` (one per row).

        Returns the boxes after: the gate copies' boxes are the whole map.
        """
        self.add_bias(z, bias, layout)
        return whole_outside_features(boxes, layout, z.shape[-2:])


class FusedProportionalSharing:
    """``"proportional"``, in place: one absolute value, one reduction, one multiply-add."""

    name = "proportional"
    in_place = True

    def __init__(
        self,
        block_elements: int | None = 1 << 18,
        host_checks: bool | None = None,
        rows_fraction: float = 0.75,
    ) -> None:
        """``block_elements``: about how many values one block holds (``None``: one block).

        ``host_checks``: see [`Speedups`][ctc_plugin.ctc.speedups.Speedups] (``None``: on a
        CPU only). ``rows_fraction``: on a CPU, with the copies' boxes known
        (`add_bias_with_boxes`), the shares are computed only on each copy's rows where those
        take at most this fraction of the sharing copies' rows (0: never).
        """
        self.workspace = Workspace()
        self.block_elements = block_elements
        self.host_checks = host_checks
        self.rows_fraction = rows_fraction

    def add_bias(self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout) -> torch.Tensor:
        """Add the bias to the gate copy and proportional shares to the others; return ``z``."""
        z[:, :1].add_(copy_part(bias, z, 0, 1))
        self._add_shares(z[:, 1:], copy_part(bias, z, 1, None), layout)
        return z

    def add_bias_with_boxes(
        self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout, boxes: Sequence[MapBox]
    ) -> list[MapBox]:
        """`add_bias` for (N, C, channels, H, W) copies zero outside ``boxes`` (one per row).

        Returns the boxes after: the gate copies' are the whole map, and the units where every
        sharing copy was zero (which get equal shares) widen the boxes of their example's copies.
        """
        z[:, :1].add_(copy_part(bias, z, 0, 1))
        bias = copy_part(bias, z, 1, None)
        rows = self._sharing_rows(z, bias, boxes)
        if rows is None:
            empty = self._add_shares(z[:, 1:], bias, layout)
        else:
            empty = self._add_shares_on_rows(z[:, 1:], bias, rows, layout)
        copies, height, width = layout.copies, z.shape[-2], z.shape[-1]
        boxes = whole_outside_features(boxes, layout, (height, width))
        if empty is None:
            return boxes
        # units where every sharing copy was zero got equal shares (nonzero where the bias
        # is): widen the boxes over them
        shared = empty & (bias != 0)
        for example in range(z.shape[0]):
            spread = shared[example, 0].reshape(-1, height, width).any(dim=0)
            if not bool(spread.any()):
                continue
            rows, cols = spread.any(dim=1).nonzero(), spread.any(dim=0).nonzero()
            covered = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
            for row in range(example * copies + 1, (example + 1) * copies):
                boxes[row] = union_box(boxes[row], covered)
        return boxes

    def _sharing_rows(
        self, z: torch.Tensor, bias: torch.Tensor, boxes: Sequence[MapBox]
    ) -> list[list[RowRange]] | None:
        """Per example, the rows of its sharing copies, where the shares are computed on them.

        ``None`` (compute them on the whole maps): off a CPU, without host checks (the units
        where every copy is zero are then handled in the same full-size pass), with a bias per
        copy or example, or where the rows take more than ``rows_fraction`` of the copies' rows
        (the deeper layers, where a whole-map pass in cache-sized blocks costs less).
        """
        if (
            z.dim() != 5
            or z.device.type != "cpu"
            or self.block_elements is None
            or not checks_host(self.host_checks, z)
            or bias.dim() > z.dim() - 2
        ):
            return None
        copies = z.shape[1]
        rows = box_rows(boxes)
        sharing = [rows[n * copies + 1 : (n + 1) * copies] for n in range(z.shape[0])]
        covered = sum(stop - first for example in sharing for first, stop in example)
        if covered > self.rows_fraction * z.shape[0] * (copies - 1) * z.shape[-2]:
            return None
        return sharing

    def _add_shares_on_rows(
        self,
        sharing: torch.Tensor,
        bias: torch.Tensor,
        rows: list[list[RowRange]],
        layout: CopyLayout,
    ) -> torch.Tensor | None:
        """`_add_shares` computed on each sharing copy's ``rows`` only (zero elsewhere).

        A copy that is zero at a unit adds nothing to the sum there and gets no share, so only
        its rows count. The sum of the magnitudes is one copy's size per example; the units
        where every copy is zero (outside all rows too) get equal shares as on whole maps.
        """
        examples, _, *unit_shape = sharing.shape
        empty = torch.empty(examples, 1, *unit_shape, dtype=torch.bool)
        for example, example_rows in enumerate(rows):
            copies = sharing[example]  # (S, channels, H, W)
            pieces = self._pieces(copies, example_rows)
            (total,) = self.workspace.buffers(
                copies, 1, slot="total", shape=unit_shape, dtype=formula_dtype(copies)
            )
            total.zero_()
            for piece in pieces:
                (magnitude,) = self.workspace.buffers(copies[piece], 1)
                torch.abs(copies[piece], out=magnitude)
                total[piece[1:]].add_(magnitude.sum(dim=0, dtype=total.dtype))
            torch.eq(total, 0, out=empty[example, 0])
            factor = bias_per_magnitude(bias, total.masked_fill_(empty[example, 0], 1.0))
            overflow, scale = factor.isinf(), None
            if bool(overflow.any()):
                factor, scale = rescaled_factor(bias, total, overflow)
            for piece in pieces:
                (magnitude,) = self.workspace.buffers(copies[piece], 1)
                torch.abs(copies[piece], out=magnitude)
                if scale is not None:
                    magnitude.mul_(scale[piece[1:]])
                copies[piece].addcmul_(magnitude, factor[piece[1:]])
        if not bool(empty.any()):
            return None
        self._add_fallback(sharing, bias, empty, layout)  # every copy zero: split equally
        return empty

    def _pieces(
        self, copies: torch.Tensor, rows: Sequence[RowRange]
    ) -> list[tuple[slice, slice, slice]]:
        """``[copies, channels, rows]`` indices of (S, channels, H, W) ``copies`` over their rows.

        Runs of copies with the same ``rows``, in blocks of channels of about
        ``block_elements`` values (their magnitudes stay in the cache; `_sharing_rows` takes
        this path only with blocks).
        """
        channels, width = copies.shape[1], copies.shape[-1]
        pieces = []
        for first, stop, (row_start, row_stop) in row_runs(rows):
            per_channel = (stop - first) * (row_stop - row_start) * width
            step = max(1, self.block_elements // per_channel)  # type: ignore[operator]
            pieces.extend(
                (slice(first, stop), slice(start, start + step), slice(row_start, row_stop))
                for start in range(0, channels, step)
            )
        return pieces

    def _add_shares(
        self, sharing: torch.Tensor, bias: torch.Tensor, layout: CopyLayout
    ) -> torch.Tensor | None:
        """Add ``bias * |z_k| / sum_j |z_j|`` to the sharing copies ``sharing`` in place.

        Returns where every sharing copy was zero (they got equal shares), ``None`` if nowhere.
        """
        # the per-unit factor b / D is one copy's size, so the full-size work is one abs, one
        # reduction and one fused multiply-add; done in blocks of channels whose absolute
        # values stay in the cache (a full-size buffer would also be a full copy's memory)
        if sharing.dim() < 3 or self.block_elements is None or sharing.device.type != "cpu":
            blocks = [(sharing, bias)]
        else:
            channels = sharing.shape[2]
            step = max(1, self.block_elements * channels // max(1, sharing.numel()))
            blocks = [
                (
                    sharing.narrow(2, first, min(step, channels - first)),
                    _channel_block(bias, sharing, first, min(step, channels - first)),
                )
                for first in range(0, channels, step)
            ]
        empties, any_empty = [], False
        checks = checks_host(self.host_checks, sharing)
        for block, block_bias in blocks:
            (magnitude,) = self.workspace.buffers(block, 1)
            torch.abs(block, out=magnitude)
            total = magnitude.sum(dim=1, keepdim=True, dtype=formula_dtype(block))
            empty = total == 0
            if not checks:  # equal shares where every copy has z = 0, without asking where
                self._add_equal_shares(block, block_bias, magnitude, total, empty, layout)
                any_empty = True
            else:
                factor = bias_per_magnitude(block_bias, total.masked_fill_(empty, 1.0))
                overflow = factor.isinf()
                found = int(empty.any() + 2 * overflow.any())  # one read of the device
                some_empty, some_overflow = bool(found & 1), bool(found & 2)
                if some_overflow:
                    factor, scale = rescaled_factor(block_bias, total, overflow)
                    magnitude.mul_(scale)
                block.addcmul_(magnitude, factor)
                if some_empty:  # every copy has z = 0 here: split equally
                    self._add_fallback(block, block_bias, empty, layout)
                    any_empty = True
            empties.append(empty)
        if not any_empty:
            return None
        return empties[0] if len(empties) == 1 else torch.cat(empties, dim=2)

    @staticmethod
    def _add_equal_shares(
        block: torch.Tensor,
        bias: torch.Tensor,
        magnitude: torch.Tensor,
        total: torch.Tensor,
        empty: torch.Tensor,
        layout: CopyLayout,
    ) -> None:
        """Add the proportional shares, equal ones where every copy is zero, with no host sync.

        Where every copy is zero, ``magnitude`` and ``total`` are zero, so adding the equal
        weights to the one and 1 to the other there turns ``|z_k| / sum_j |z_j|`` into them.
        Not knowing where ``bias / total`` overflows (`rescaled_factor`), the magnitudes are
        multiplied by the scale everywhere (by 1 where it does not).
        """
        where_empty = empty.to(block.dtype)
        total.add_(where_empty)
        factor, scale = rescaled_factor(bias, total, bias_per_magnitude(bias, total).isinf())
        magnitude.mul_(scale).addcmul_(where_empty, equal_weights(block, layout))
        block.addcmul_(magnitude, factor)

    @staticmethod
    def _add_fallback(
        sharing: torch.Tensor, bias: torch.Tensor, empty: torch.Tensor, layout: CopyLayout
    ) -> None:
        """Add equal shares of the bias at the units where all sharing copies are zero.

        Such units are few, so the work is indexed to them instead of a full-size pass.
        """
        example, *unit = empty[:, 0].nonzero(as_tuple=True)
        bias = bias.view(*([1] * (sharing.dim() - bias.dim())), *bias.shape)
        bias = bias.expand(sharing.shape[0], -1, *sharing.shape[2:])
        bias_at = bias[(example, slice(None), *unit)]  # (M, 1) or (M, S)
        weights = equal_weights(sharing, layout).flatten(1)  # (N or 1, S)
        weights = weights if weights.shape[0] == 1 else weights[example]
        sharing[(example, slice(None), *unit)] += bias_at * weights


def bias_per_magnitude(bias: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """``bias / total``, the factor of each copy's ``|z_k|`` in its proportional share.

    In ``total``'s dtype (float32 for 16-bit float copies,
    [`formula_dtype`][ctc_plugin.ctc.sharing.formula_dtype]).
    """
    return bias.to(total.dtype) / total


def rescaled_factor(
    bias: torch.Tensor, total: torch.Tensor, overflow: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The factor of each copy's ``|z_k|`` where `bias_per_magnitude` ``overflow``s, and its scale.

    ``bias / total`` leaves the format's range where the copies are all far smaller than the
    bias (their sum ``total`` subnormal: HaloNet's attention on its zero padding), though each
    share ``bias * |z_k| / total`` lies within it, as the spec computes it. There the magnitudes
    and their sum are scaled by ``2 ** (e // 2)``, ``2 ** e`` beyond the format's largest
    number (exact: a power of two): ``|z_k| * scale`` times the factor ``bias / (total *
    scale)`` is the share. Returns the factor and the scale (per unit, 1 where no overflow) to
    multiply the magnitudes by.
    """
    large = 2.0 ** (math.frexp(torch.finfo(total.dtype).max)[1] // 2)
    scale = torch.where(overflow, total.new_tensor(large), total.new_tensor(1.0))
    return bias_per_magnitude(bias, total * scale), scale


def _channel_block(bias: torch.Tensor, z: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """The part of a bias broadcastable to ``z`` that meets ``z``'s dims 2 ``first..+count``."""
    axis = 2 - (z.dim() - bias.dim())  # bias is aligned to z's trailing dims
    if axis < 0 or bias.shape[axis] == 1:
        return bias
    return bias.narrow(axis, first, count)


class FusedReferenceSharing:
    """``"reference"``, in place, blockwise, on scratch buffers, on packed boxes.

    The formula is some twenty elementwise steps per value. On a CPU, blocks of about
    ``block_elements`` values keep them in the cache instead of streaming the whole layer from
    memory each time, and where the copies' supports are small (a feature's copy is zero outside
    its receptive field, which in the first layers is a small part of the image) only the boxes
    around the copies' nonzero values are computed, packed into blocks of boxes of about one
    size (a background segment's whole-map box apart from the small ones). Values outside a box
    are zero, get no share and add nothing to the statistics. Statistics are per copy, so
    neither changes a value. On other devices (many small kernel launches and host
    synchronisations cost more there than memory traffic) the whole layer is one block.

    The reference full copy's own shares need no formula: ``s_F = [q(z_F) != 0]``.

    Args:
        block_elements: Values per block on a CPU; ``None``: the whole layer in one block.
        crop_fraction: On a CPU, when the boxes, packed by size, take at most
            this fraction of a layer, only they are computed (0: never).
        host_checks: See [`Speedups`][ctc_plugin.ctc.speedups.Speedups] (``None``: on a CPU
            only).
        native: Where [`native.applicable`][ctc_plugin.ctc.native.applicable] holds, compute
            the formula with the compiled kernel of [`native`][ctc_plugin.ctc.native] on each
            copy's carried box (or its whole map), instead of torch's operations on blocks and
            packed boxes. ``None``: where the kernel builds here; ``True``: raise where it does
            not; ``False``: never.
    """

    name = "reference"
    in_place = True
    quantum = 10.0
    ratio_quantum = 1000.0

    def __init__(
        self,
        block_elements: int | None = 1 << 18,
        crop_fraction: float = 0.5,
        host_checks: bool | None = None,
        native: bool | None = None,
    ) -> None:
        self.block_elements = block_elements
        self.crop_fraction = crop_fraction
        self.host_checks = host_checks
        self.native = native
        self.workspace = Workspace()

    def add_bias(self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout) -> torch.Tensor:
        """Add the bias to the gate copy and the reference shares to the sharing copies."""
        return self._add_bias(z, bias, layout)

    def add_bias_with_boxes(
        self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout, boxes: Sequence[MapBox]
    ) -> list[MapBox]:
        """`add_bias` for (N, C, channels, H, W) copies zero outside ``boxes`` (one per row).

        The packed boxes are the carried ones instead of boxes read from the values. No copy
        gets a share where it is zero, so the boxes after are the same, with the gate copy's
        (which gets the whole bias) and the full copy's on the whole map.
        """
        self._add_bias(z, bias, layout, boxes)
        return whole_outside_features(boxes, layout, z.shape[-2:])

    def _add_bias(
        self,
        z: torch.Tensor,
        bias: torch.Tensor,
        layout: CopyLayout,
        carried: Sequence[MapBox] | None = None,
    ) -> torch.Tensor:
        """`add_bias`, with the carried boxes of ``z``'s rows when they are known."""
        if not layout.reference_full:
            raise ValueError("reference sharing needs the reference full copy in the layout")
        wide = formula_dtype(z)
        if wide == z.dtype:
            self._add_shares_in_blocks(z, bias, layout.first_feature, carried)
        else:  # 16-bit floats: ceil(10 z_k) * 1000 leaves float16's range, bfloat16's precision
            widened = z.to(wide)
            self._add_shares_in_blocks(widened, bias.to(wide), layout.first_feature, carried)
            z.copy_(widened)
        z[:, :1].add_(copy_part(bias, z, 0, 1))
        return z

    def _add_shares_in_blocks(
        self,
        z: torch.Tensor,
        bias: torch.Tensor,
        first: int,
        carried: Sequence[MapBox] | None = None,
    ) -> None:
        """Add the shares of the sharing copies, on a CPU one example and a block at a time.

        Copy 1 of each group is the reference full copy, copies from ``first`` on are the
        feature (and baseline) copies. ``carried``: boxes outside which each row of ``z``
        (example-major) is zero, when known.
        """
        dims = statistic_dims(bias, z.dim())
        blockwise = self.block_elements is not None and z.device.type == "cpu"
        # the compiled formula takes one example at a time, with or without blocks
        if blockwise or (self.native is not False and z.device.type == "cpu"):
            groups = [(z[n : n + 1], _example_part(bias, z, n)) for n in range(z.shape[0])]
        else:  # one block: the statistics are per example and copy anyway
            groups = [(z, bias)]
        copies = z.shape[1]
        for example, (group, group_bias) in enumerate(groups):
            full_bias = copy_part(group_bias, group, 1, 2)
            full = full_copy_statistics(
                group[:, 1:2], full_bias, dims, self.workspace, self.host_checks
            )
            (scratch,) = self.workspace.buffers(full.ceil_full, 1)
            own_share = torch.ne(full.ceil_full, math.inf, out=scratch)  # inf where q(z_F) = 0
            group[:, 1:2].addcmul_(own_share, full_bias)
            shared_bias = copy_part(group_bias, group, first, None)
            if self._uses_native(group, shared_bias, dims):
                boxes = None
                if carried is not None and full.exact_zero is None and group.dim() == 5:
                    boxes = carried[example * copies + first : (example + 1) * copies]
                native.add_reference_shares(
                    group[:, first:],
                    full.ceil_full,
                    full.exact_zero,
                    full.sigma,
                    shared_bias,
                    boxes,
                )
                continue
            known = None
            if blockwise and carried is not None and group.dim() == 5:
                known = [
                    as_slices(box) for box in carried[example * copies : (example + 1) * copies]
                ]
            small = self._small_boxes(group, dims, full, first, known) if blockwise else None
            if small is not None:
                self._add_packed_shares(group, group_bias, small, dims, full, first)
                continue
            per_copy = copies
            if blockwise:
                per_copy = max(1, self.block_elements // max(1, group[0, 0].numel()))
            for start in range(first, copies, per_copy):
                stop = min(start + per_copy, copies)
                block = group[:, start:stop]
                unit_part, group_part = share_factors(block, full, dims, self.workspace)
                block.addcmul_(unit_part, group_part * copy_part(group_bias, group, start, stop))

    def _uses_native(self, z: torch.Tensor, bias: torch.Tensor, dims: tuple[int, ...]) -> bool:
        """Whether the compiled kernel computes these copies' shares (raises if required)."""
        if self.native is False or not native.applicable(z, bias, dims):
            return False
        if native.library() is None:
            if self.native:
                raise RuntimeError(
                    "Speedups(native_formula=True), but the compiled reference formula is "
                    f"unavailable: {native.unavailable_reason()}"
                )
            return False
        return True

    def _small_boxes(
        self,
        group: torch.Tensor,
        dims: tuple[int, ...],
        full: FullCopyStatistics,
        first: int,
        known: list[Box] | None = None,
    ) -> list[list[tuple[int, tuple[slice, ...]]]] | None:
        """``(copy, box)`` of the copies with a nonzero value, by size, or ``None``: compute whole.

        The boxes come in groups of about one size (`size_groups`), each packed apart at its
        largest box's size: a large box (a background segment, a feature that has grown over
        the map) takes its own size, not every box's. They are used where their packed blocks
        take at most ``crop_fraction`` of the layer, the values are per channel over positions
        and the full copy has no exact zeros (those enter the statistics outside the boxes).
        ``known``: boxes of the group's copies known to hold their nonzero values (read from
        the values when ``None``).
        """
        if self.crop_fraction <= 0 or full.exact_zero is not None:
            return None
        if not dims or dims != tuple(range(3, group.dim())):
            return None
        copies_values = group[:, first:]
        shape = group.shape[3:]
        limit = self.crop_fraction * copies_values.shape[1] * math.prod(shape)
        if known is not None:
            boxes: list[Box] = known[first:]
        else:
            # the first channel's boxes lie inside the copies' boxes: when they are already too
            # large, the whole search is skipped (deeper layers, large receptive fields)
            inner = support_boxes(copies_values[:, :, :1], dims)
            if packed_volume(inner, size_groups(inner, shape)) > limit:
                return None
            boxes = support_boxes(copies_values, dims)
        groups = size_groups(boxes, shape)
        if packed_volume(boxes, groups) > limit:
            return None
        return [[(first + i, boxes[i]) for i in members] for members in groups]

    def _add_packed_shares(
        self,
        group: torch.Tensor,
        group_bias: torch.Tensor,
        sized: list[list[tuple[int, tuple[slice, ...]]]],
        dims: tuple[int, ...],
        full: FullCopyStatistics,
        first: int,
    ) -> None:
        """Add the shares of the copies' boxes, computed as packed blocks, one size at a time.

        Every box of a size group goes to the corner of its slot in a (1, boxes, C, *largest
        box) block whose other values are 0 (the full copy's divisor there is +inf): zeros get
        no share and do not count, so each slot's statistics are its copy's.
        """
        for boxes in sized:
            sizes = largest_extents([box for _, box in boxes])
            # a few copies at a time: the block stays in the cache, its memory one block's
            per_chunk = len(boxes)
            if self.block_elements is not None:
                per_chunk = max(1, self.block_elements // (group.shape[2] * math.prod(sizes)))
            for start in range(0, len(boxes), per_chunk):
                self._add_packed_chunk(
                    group, group_bias, boxes[start : start + per_chunk], sizes, dims, full, first
                )

    def _add_packed_chunk(
        self,
        group: torch.Tensor,
        group_bias: torch.Tensor,
        boxes: list[tuple[int, tuple[slice, ...]]],
        sizes: list[int],
        dims: tuple[int, ...],
        full: FullCopyStatistics,
        first: int,
    ) -> None:
        """`_add_packed_shares` for some of the boxes, packed at the common ``sizes``."""
        shape = (1, len(boxes), group.shape[2], *sizes)
        values, divisor = self.workspace.buffers(group, 2, slot="boxes", shape=shape)
        values.zero_()
        divisor.fill_(math.inf)
        corners = [tuple(slice(0, b.stop - b.start) for b in box) for _, box in boxes]
        for slot, ((copy, box), corner) in enumerate(zip(boxes, corners)):
            values[(0, slot, slice(None), *corner)].copy_(group[(0, copy, slice(None), *box)])
            divisor[(0, slot, slice(None), *corner)].copy_(
                full.ceil_full[(0, 0, slice(None), *box)]
            )
        stats = FullCopyStatistics(ceil_full=divisor, exact_zero=None, sigma=full.sigma)
        unit_part, group_part = share_factors(values, stats, dims, self.workspace)
        bias = copy_part(group_bias, group, first, None)
        if bias.dim() == group.dim() and bias.shape[1] != 1:  # a bias per copy
            bias = bias[:, [copy - first for copy, _ in boxes]]
        factor = (group_part * bias)[0]  # (boxes, C, 1, ...)
        for slot, ((copy, box), corner) in enumerate(zip(boxes, corners)):
            group[(0, copy, slice(None), *box)].addcmul_(
                unit_part[(0, slot, slice(None), *corner)], factor[slot]
            )


def _example_part(bias: torch.Tensor, z: torch.Tensor, example: int) -> torch.Tensor:
    """The slice of a bias that belongs to one example (or the bias itself)."""
    if bias.dim() == z.dim() and bias.shape[0] != 1:
        return bias[example : example + 1]
    return bias


@dataclass(frozen=True)
class FullCopyStatistics:
    """What the fused reference formula takes from the reference full copy of one layer.

    Attributes:
        ceil_full: ``ceil(10 z_F) = 10 q(z_F)`` (whole numbers), with ``+inf`` where it is 0
            (dividing by it then gives the formula's ``rho = 0`` there).
        exact_zero: Where ``z_F = 0`` (as 0/1 values), or ``None`` when it is nowhere zero.
        sigma: The reference spread ``std(log10 r)``, with size 1 along the statistic dims, in
            [`statistics_dtype`][ctc_plugin.ctc.sharing.statistics_dtype].
    """

    ceil_full: torch.Tensor
    exact_zero: torch.Tensor | None
    sigma: torch.Tensor


def full_copy_statistics(
    z_full: torch.Tensor,
    bias_full: torch.Tensor,
    dims: tuple[int, ...],
    workspace: Workspace | None = None,
    host_checks: bool | None = None,
) -> FullCopyStatistics:
    """The reference full copy's part of the formula, fused.

    The spec is [`reference_spread`][ctc_plugin.ctc.sharing.reference_spread].

    Args:
        z_full: (N, 1, *rest) bias-free pre-activation of the reference full copy.
        bias_full: The bias as seen by the reference full copy (broadcastable).
        dims: The statistic dims.
        workspace: Scratch buffers to reuse; ``ceil_full`` then lives in the workspace's
            ``"full"`` slot and is valid until the next call. ``None`` allocates.
        host_checks: Whether to ask the device if ``z_full`` has an exact zero, to leave out
            the mask of them when not (``None``: on a CPU only).
    """
    if workspace is None:
        ceil_full, spread, scratch = (torch.empty_like(z_full) for _ in range(3))
    else:
        (ceil_full,) = workspace.buffers(z_full, 1, slot="full")
        spread, scratch = workspace.buffers(z_full, 2)
    quantum, ratio_quantum = FusedReferenceSharing.quantum, FusedReferenceSharing.ratio_quantum
    # n = q(z_F) + b and r = ceil(1000 |n / mean(n)|) / 1000, in place
    torch.mul(z_full, quantum, out=ceil_full).ceil_()
    torch.div(ceil_full, quantum, out=spread).add_(bias_full)
    spread_mean = spread_mean_of(ceil_full, bias_full, dims)  # the same in any layout
    no_mean = spread_mean == 0  # r is not finite in such a group: no usable entry, sigma = 0
    spread.div_(spread_mean.masked_fill(no_mean, 1.0)).abs_()
    r = spread.mul_(ratio_quantum).ceil_().div_(ratio_quantum)
    # sigma = std of log10 r over the entries with r > 0; log10 of 1 (exactly 0) elsewhere, so
    # sums need no mask, only the count
    unusable = torch.eq(r, 0, out=scratch)
    count = _group_size(r, dims) - unusable.sum(dim=dims, keepdim=True)
    log_r = log10_(unusable.add_(r))
    _, sigma = _mean_std_of_counted(log_r, count, dims, workspace)
    sigma.masked_fill_(no_mean, 0.0)
    exact_zero = torch.eq(z_full, 0, out=scratch)
    # skipping the mask where z_F has no zero saves passes; asking waits for the device
    needed = not checks_host(host_checks, z_full) or bool(exact_zero.any())
    exact_zero = exact_zero.clone() if needed else None  # the scratch buffer is reused below
    return FullCopyStatistics(
        ceil_full=_infinite_where_zero(ceil_full, scratch), exact_zero=exact_zero, sigma=sigma
    )


def _infinite_where_zero(u: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """``u`` with ``+inf`` where it is 0, in place (float arithmetic; a boolean mask costs more).

    ``scratch`` is a buffer shaped like ``u`` that is overwritten.
    """
    # 1 / [u != 0] - 1 is 0 where u != 0 and +inf where u = 0
    return u.add_(torch.ne(u, 0, out=scratch).reciprocal_().sub_(1.0))


def log10_(values: torch.Tensor) -> torch.Tensor:
    """``values.log10_()``; on a CPU through NumPy's vectorised ``log10``.

    Torch's CPU ``log10`` is not vectorised in the builds measured here (about 1.1 ns a float32
    value, against 0.23 ns for NumPy's and 0.05 ns for a multiply), and it is the costliest step
    of the ``"reference"`` formula. Both are within two units in the last place. NumPy writes
    past torch's version counter and autograd, so ``values`` must be scratch memory that only
    the caller reads (the formula's workspace buffers).
    """
    if values.device.type != "cpu" or values.dtype not in (torch.float32, torch.float64):
        return values.log10_()
    array = values.numpy()
    np.log10(array, out=array)
    return values


def _group_size(values: torch.Tensor, dims: tuple[int, ...]) -> int:
    """Number of entries per statistic group (the product of the sizes along ``dims``)."""
    return math.prod(values.shape[d] for d in dims)


def _mean_std_of_counted(
    values: torch.Tensor,
    count: torch.Tensor,
    dims: tuple[int, ...],
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std over ``dims`` of the counted entries; the others must hold 0.

    ``count`` (size 1 along ``dims``) is how many entries count; groups without any get 0.
    One pass over the values (sum and sum of squares) in
    [`statistics_dtype`][ctc_plugin.ctc.sharing.statistics_dtype]; ``workspace`` keeps the wide
    copy of ``values`` (its ``"wide"`` slot) instead of allocating it.
    """
    dtype = statistics_dtype(values)
    if workspace is None:
        wide = values.to(dtype, copy=True)
    else:
        (wide,) = workspace.buffers(values, 1, slot="wide", dtype=dtype)
        wide.copy_(values)
    count = count.to(wide.dtype).clamp_min(1.0)
    mean = wide.sum(dim=dims, keepdim=True).div_(count)
    second = wide.mul_(wide).sum(dim=dims, keepdim=True).div_(count)  # the copy, squared
    return mean, (second - mean.square()).clamp_min_(0.0).sqrt_()


def share_factors(
    z_copies: torch.Tensor,
    full: FullCopyStatistics,
    dims: tuple[int, ...],
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The shares of some sharing copies as ``unit_part * group_part``, fused.

    The spec is [`reference_shares`][ctc_plugin.ctc.sharing.reference_shares].

    ``unit_part`` has the shape of ``z_copies`` (in the workspace when one is given);
    ``group_part`` has size 1 along ``dims``, so it can be multiplied into the bias before the
    one full-size multiply-add that adds the shares.
    """
    if workspace is None:
        rho, scratch = torch.empty_like(z_copies), torch.empty_like(z_copies)
    else:
        rho, scratch = workspace.buffers(z_copies)
    quantum, ratio_quantum = FusedReferenceSharing.quantum, FusedReferenceSharing.ratio_quantum
    # Every full-size step is in place on one of two buffers (no full-size allocation, no
    # boolean intermediates). z_copies (perhaps a strided box of a larger tensor) is read once:
    # 10 z_k is nonzero exactly where z_k is, so the count of the valid units comes from it.
    torch.mul(z_copies, quantum, out=rho)
    # mu_k, std_k of l_k = log10 rho_k (0 where rho_k = 0) over the valid units, where
    # z_k != 0 or z_F = 0. l_k is 0 wherever z_k = 0, so its sums need no mask; only the count.
    count = torch.ne(rho, 0, out=scratch).sum(dim=dims, keepdim=True)
    if full.exact_zero is not None:
        torch.eq(rho, 0, out=scratch).mul_(full.exact_zero)
        count += scratch.sum(dim=dims, keepdim=True)
    # rho_k = ceil(1000 |a| / |b|) / 1000 with a = ceil(10 z_k), b = ceil(10 z_F) (+inf where
    # the formula gives 0)
    rho.ceil_().mul_(ratio_quantum).div_(full.ceil_full).abs_()
    rho.ceil_().div_(ratio_quantum)
    # l = log10 of 1 where rho = 0: exactly 0 (log10 of 0 takes several times longer)
    log_ratio = log10_(torch.eq(rho, 0, out=scratch).add_(rho))
    mu, std = _mean_std_of_counted(log_ratio, count, dims, workspace)

    # Capping: l' = mu + (l - mu) c with c = sigma / std where std > sigma, else l' = l, and
    # s = 10 ** l' = 2 ** (l c log2(10)) * 2 ** (mu (1 - c) log2(10)) where rho > 0, s = 0
    # where rho = 0. exp2 costs a fraction of a power.
    # c and the per-group factor in the statistics' dtype, each rounded once to the copies'
    sigma = full.sigma.to(std.dtype)
    c = torch.where(std > sigma, sigma / std.clamp_min(torch.finfo(std.dtype).tiny), 1.0)
    dtype = z_copies.dtype
    unit_part = rho.ne_(0).mul_(log_ratio.mul_((c * LOG2_10).to(dtype)).exp2_())
    return unit_part, torch.exp2(mu * (1.0 - c) * LOG2_10).to(dtype)


#: log2(10): converts base-10 exponents to base 2.
LOG2_10 = math.log2(10.0)


__all__ = [
    "FullCopyStatistics",
    "FusedNoSharing",
    "FusedProportionalSharing",
    "FusedReferenceSharing",
    "full_copy_statistics",
    "share_factors",
]
