"""Bias sharing: how each bias is divided among the copies of an example.

A layer with a bias computes ``z + b``. In the CTC pass each copy ``k`` computes its bias-free
part ``z_k`` and receives ``b * s_k``; the gate copy always receives the whole bias (it is the
model's real forward pass). The three modes differ in ``s_k``:

- ``"none"``: ``s_k = 0``. The pass is the network linearised at the input with its gates
  fixed, so a feature's score is gradient x input summed over the feature.
- ``"proportional"``: ``s_k = |z_k| / sum_j |z_j|`` per unit over the sharing copies (an equal
  split among the present copies where every ``z_j`` is zero). Shares sum to one, so over a
  partition the scores add up to the target logit (conservative).
- ``"reference"``: the published formula (quantisation, log-ratios, spread capping); see
  :class:`ReferenceSharing`.

Every mode adds the shares in place into the grouped tensor ``z`` of shape (N, C, *rest).
``bias`` is broadcastable to (N, C, *rest): either aligned with ``rest`` (a layer's bias) or
carrying the (N, C) leading dimensions (a per-example constant).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from ctc_plugin.ctc.layout import CopyLayout

BiasSharingMode = Literal["reference", "proportional", "none"]
BIAS_SHARING_MODES: tuple[str, ...] = ("reference", "proportional", "none")


class BiasSharing(Protocol):
    """Adds shares of a bias to the copies of a grouped pre-activation, in place."""

    name: str

    def add_bias(self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout) -> None:
        """Add ``bias`` to the gate copy and the shares of ``bias`` to the sharing copies."""


def _copy_part(bias: torch.Tensor, z: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
    """The slice of a bias that belongs to copies ``start:stop`` (or the bias itself)."""
    if bias.dim() == z.dim() and bias.shape[1] != 1:
        return bias[:, start:stop]
    return bias


def _example_part(bias: torch.Tensor, z: torch.Tensor, example: int) -> torch.Tensor:
    """The slice of a bias that belongs to one example (or the bias itself)."""
    if bias.dim() == z.dim() and bias.shape[0] != 1:
        return bias[example : example + 1]
    return bias


class NoSharing:
    """``"none"``: feature copies get no bias; the pass is gradient x input per feature."""

    name = "none"

    def add_bias(self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout) -> None:
        """Add the bias to the gate copy only."""
        z[:, :1].add_(_copy_part(bias, z, 0, 1))


class ProportionalSharing:
    """``"proportional"``: each unit's bias split by ``|z_k| / sum_j |z_j|`` (conservative)."""

    name = "proportional"

    def add_bias(self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout) -> None:
        """Add the bias to the gate copy and proportional shares to the sharing copies."""
        sharing = z[:, 1:]
        bias_sharing = _copy_part(bias, z, 1, None)
        # z_k + b |z_k| / D with D = sum_j |z_j|: the per-unit factor b / D is one copy's size,
        # so the full-size work is one reduction, one abs and one fused multiply-add.
        magnitude = sharing.abs()
        total = magnitude.sum(dim=1, keepdim=True)
        empty = total == 0
        factor = bias_sharing / total.masked_fill(empty, 1.0)
        sharing.addcmul_(magnitude, factor)
        if bool(empty.any()):  # every copy has z = 0 here: split equally among those present
            self._add_fallback(sharing, bias_sharing, empty, layout)
        z[:, :1].add_(_copy_part(bias, z, 0, 1))

    @staticmethod
    def _add_fallback(
        sharing: torch.Tensor, bias: torch.Tensor, empty: torch.Tensor, layout: CopyLayout
    ) -> None:
        """Add equal shares of the bias at the units where all sharing copies are zero.

        Such units are few, so the work is indexed to them instead of a full-size pass.
        """
        example, *unit = empty[:, 0].nonzero(as_tuple=True)
        copies = sharing.shape[1]
        bias = bias.view(*([1] * (sharing.dim() - bias.dim())), *bias.shape)
        bias = bias.expand(sharing.shape[0], -1, *sharing.shape[2:])
        bias_at = bias[(example, slice(None), *unit)]  # (M, 1) or (M, S)
        if layout.presence is None:
            weights = sharing.new_full((1, copies), 1.0 / max(copies, 1))
        else:
            presence = layout.presence.to(sharing.dtype)[example]
            weights = presence / presence.sum(dim=1, keepdim=True).clamp_min(1.0)
        sharing[(example, slice(None), *unit)] += bias_at * weights


class ReferenceSharing:
    """``"reference"``: the published scaling mechanism of CTC, with its quantisation.

    With ``q(u) = ceil(10u)/10`` and ``z_F`` the reference full copy's pre-activation:

    - ``rho_k = ceil(1000 |q(z_k) / q(z_F)|) / 1000`` (0 where ``q(z_F) = 0``),
    - ``l_k = log10(rho_k)`` (0 where ``rho_k = 0``),
    - reference spread ``sigma = std(log10 r)`` with ``n = q(z_F) + b`` and
      ``r = ceil(1000 |n / mean(n)|) / 1000`` (entries with ``r = 0`` left out),
    - ``mu_k, std_k`` = mean and std of ``l_k`` over the units where ``z_k != 0`` or ``z_F = 0``,
    - ``l'_k = mu_k + (l_k - mu_k) sigma / std_k`` where ``std_k > sigma``, else ``l_k``,
    - ``s_k = 10 ** l'_k`` (0 where ``rho_k = 0``).

    Statistics run per channel over positions when the bias is per channel (convolutions,
    BatchNorm) and over all units when the bias differs per unit (dense layers). Standard
    deviations are population (ddof = 0) ones, as in NumPy.
    """

    name = "reference"
    quantum = 10.0
    ratio_quantum = 1000.0
    #: Values per block of the blockwise computation on a CPU (4 MiB in float32).
    block_elements = 1 << 20

    def __init__(self) -> None:
        self.workspace = Workspace()

    def add_bias(self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout) -> None:
        """Add the bias to the gate copy and the reference shares to the sharing copies."""
        if not layout.reference_full:
            raise ValueError("reference sharing needs the reference full copy in the layout")
        self._add_shares_in_blocks(z, bias)
        z[:, :1].add_(_copy_part(bias, z, 0, 1))

    def _add_shares_in_blocks(self, z: torch.Tensor, bias: torch.Tensor) -> None:
        """Add the shares block by block: on a CPU one example, a few copies at a time.

        The formula is some twenty elementwise steps; on a CPU, blocks of about
        ``block_elements`` values keep them in the cache instead of streaming the whole layer
        from memory each time. Statistics are per copy, so blocks of whole copies give exactly
        the values of the whole-layer computation. On other devices (many small kernel
        launches and host synchronisations cost more there than memory traffic) the whole layer
        is one block.
        """
        dims = _statistic_dims(bias, z.dim())
        if z.device.type == "cpu":
            per_copy = max(1, self.block_elements // max(1, z[0, 0].numel()))
            groups = [(z[n : n + 1], _example_part(bias, z, n)) for n in range(z.shape[0])]
        else:  # one block: the statistics are per example and copy anyway
            per_copy, groups = z.shape[1], [(z, bias)]
        for group, group_bias in groups:
            full = full_copy_statistics(group[:, 1:2], _copy_part(group_bias, group, 1, 2), dims)
            for start in range(1, group.shape[1], per_copy):
                stop = min(start + per_copy, group.shape[1])
                block = group[:, start:stop]
                shares = copy_shares(block, full, dims, self.workspace)
                block.addcmul_(shares, _copy_part(group_bias, group, start, stop))


def _quantise(u: torch.Tensor, quantum: float) -> torch.Tensor:
    return torch.ceil(u * quantum) / quantum


def _statistic_dims(bias: torch.Tensor, rank: int) -> tuple[int, ...]:
    """Dims of a grouped (N, C, *rest) tensor over which the reference statistics run.

    Positions over which the bias is constant (its broadcast dims); all units of ``rest`` when
    the bias differs per unit.
    """
    rest = rank - 2
    trailing = list(bias.shape[-rest:]) if bias.dim() else []
    trailing = [1] * (rest - len(trailing)) + trailing
    dims = tuple(2 + i for i, size in enumerate(trailing) if size == 1)
    return dims if dims and len(dims) < rest else tuple(range(2, rank))


def _masked_mean_std(
    values: torch.Tensor, valid: torch.Tensor, dims: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    weight = valid.to(values.dtype)
    count = weight.sum(dim=dims, keepdim=True).clamp_min(1.0)
    mean = (values * weight).sum(dim=dims, keepdim=True) / count
    var = (((values - mean) ** 2) * weight).sum(dim=dims, keepdim=True) / count
    return mean, var.sqrt()


class Workspace:
    """Reusable scratch buffers for :func:`copy_shares`, one set per thread.

    The reference formula needs two temporaries the size of a block of copies. Fresh large
    tensors cost a page fault per 4 KiB on first touch (on a CPU as much as several elementwise
    passes), so the buffers are kept and reused across layers and calls; they grow to the
    largest block seen and are released with the workspace's owner.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def buffers(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two uninitialised tensors shaped, typed and placed like ``like`` (contiguous)."""
        held = getattr(self._local, "flat", None)
        numel = like.numel()
        if (
            held is None
            or held.dtype != like.dtype
            or held.device != like.device
            or (held.shape[1] < numel)
        ):
            held = torch.empty(2, numel, dtype=like.dtype, device=like.device)
            self._local.flat = held
        return held[0, :numel].view(like.shape), held[1, :numel].view(like.shape)


@dataclass(frozen=True)
class FullCopyStatistics:
    """What the reference formula takes from the reference full copy of one layer.

    Attributes:
        q_full: ``q(z_F)``, with ``+inf`` where ``q(z_F) = 0`` (dividing by it then gives the
            formula's ``rho = 0`` there).
        exact_zero: Where ``z_F = 0`` (as 0/1 values), or ``None`` when it is nowhere zero.
        sigma: The reference spread ``std(log10 r)``, with size 1 along the statistic dims.
    """

    q_full: torch.Tensor
    exact_zero: torch.Tensor | None
    sigma: torch.Tensor


def full_copy_statistics(
    z_full: torch.Tensor, bias_full: torch.Tensor, dims: tuple[int, ...]
) -> FullCopyStatistics:
    """The reference full copy's part of the formula (see :class:`ReferenceSharing`).

    Args:
        z_full: (N, 1, *rest) bias-free pre-activation of the reference full copy.
        bias_full: The bias as seen by the reference full copy (broadcastable).
        dims: The statistic dims (see :func:`_statistic_dims`).
    """
    q_full = _quantise(z_full, ReferenceSharing.quantum)
    spread = q_full + bias_full
    spread_mean = spread.mean(dim=dims, keepdim=True)
    r = _quantise((spread / spread_mean).abs(), ReferenceSharing.ratio_quantum)
    usable = torch.isfinite(r) & (r > 0)
    log_r = torch.log10(torch.where(usable, r, torch.ones_like(r)))
    _, sigma = _masked_mean_std(log_r, usable, dims)
    exact_zero = z_full == 0
    # on a CPU, skipping the mask where z_F has no zero saves passes; elsewhere asking would
    # wait for the device
    needed = z_full.device.type != "cpu" or bool(exact_zero.any())
    return FullCopyStatistics(
        q_full=q_full.masked_fill(q_full == 0, float("inf")),
        exact_zero=exact_zero.to(z_full.dtype) if needed else None,
        sigma=sigma,
    )


def copy_shares(
    z_copies: torch.Tensor,
    full: FullCopyStatistics,
    dims: tuple[int, ...],
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """The published shares ``s_k`` of some sharing copies (see :class:`ReferenceSharing`).

    Args:
        z_copies: (N, S, *rest) bias-free pre-activations of the copies.
        full: :func:`full_copy_statistics` of the same examples.
        dims: The statistic dims.
        workspace: Scratch buffers to reuse; the result then lives in the workspace and is
            valid until its next use. ``None`` allocates.

    Returns:
        (N, S, *rest) shares.
    """
    if workspace is None:
        rho, scratch = torch.empty_like(z_copies), torch.empty_like(z_copies)
    else:
        rho, scratch = workspace.buffers(z_copies)
    # Every full-size step is in place on one of two buffers (no full-size allocation, no
    # boolean intermediates); quantisation steps keep the formula's literal order.
    # rho_k = ceil(1000 |q(z_k) / q(z_F)|) / 1000 (q(z_F) = +inf where the formula gives 0)
    torch.mul(z_copies, ReferenceSharing.quantum, out=rho)
    rho.ceil_().div_(ReferenceSharing.quantum).div_(full.q_full)
    rho.abs_().mul_(ReferenceSharing.ratio_quantum).ceil_().div_(ReferenceSharing.ratio_quantum)

    # mu_k, std_k of l_k = log10 rho_k (0 where rho_k = 0) over the valid units, where
    # z_k != 0 or z_F = 0. l_k is 0 wherever z_k = 0, so its sums need no mask; only the count.
    count = torch.ne(z_copies, 0, out=scratch).sum(dim=dims, keepdim=True)
    if full.exact_zero is not None:
        torch.eq(z_copies, 0, out=scratch).mul_(full.exact_zero)
        count += scratch.sum(dim=dims, keepdim=True)
    count.clamp_min_(1.0)
    torch.eq(rho, 0, out=scratch).add_(rho).log10_()  # log10 of 1 where rho = 0: exactly 0
    mu = scratch.sum(dim=dims, keepdim=True).div_(count)
    second = torch.linalg.vector_norm(scratch, 2, dim=dims, keepdim=True).square_().div_(count)
    std = (second - mu.square()).clamp_min_(0.0).sqrt_()

    # Capping: l' = mu + (l - mu) c with c = sigma / std, and s = 10 ** l'
    # = 2 ** (l c log2(10) + mu (1 - c) log2(10)) where rho > 0 (s = 0 where rho = 0). The
    # log-ratios l are still in `scratch`; exp2 costs a fraction of a power of rho.
    capped = std > full.sigma
    c = torch.where(capped, full.sigma / std.clamp_min(torch.finfo(std.dtype).tiny), 1.0)
    _cap_rows(rho, scratch, capped, c * LOG2_10, mu * (1.0 - c) * LOG2_10, dims)
    return rho


#: log2(10): converts base-10 exponents to base 2.
LOG2_10 = math.log2(10.0)


def _cap_rows(
    rho: torch.Tensor,
    log_rho: torch.Tensor,
    capped: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    dims: tuple[int, ...],
) -> None:
    """``rho <- 2 ** (log_rho * scale + shift)`` where ``rho > 0``, only in capped groups.

    ``capped``, ``scale`` and ``shift`` have size 1 along ``dims``; ``log_rho`` is overwritten.
    When ``dims`` are the trailing dims of the contiguous ``rho``, each group is one row of a
    2-D view and only the capped rows are touched (often few in the first layers, the largest
    ones).
    """
    if rho.device.type != "cpu":  # selecting the capped rows would wait for the device
        capped_share = log_rho.mul_(scale).add_(shift).exp2_().mul_(rho.ne(0))
        torch.where(capped, capped_share, rho, out=rho)
        return
    rows = capped.flatten().nonzero().squeeze(1)
    if rows.numel() == 0:
        return
    trailing = dims == tuple(range(rho.dim() - len(dims), rho.dim()))
    if not (trailing and rho.is_contiguous()) or rows.numel() == capped.numel():
        log_rho.mul_(scale).add_(shift).exp2_()
        rho.ne_(0).mul_(log_rho)  # 0 where rho = 0, the capped share elsewhere
        return
    table, logs = rho.view(capped.numel(), -1), log_rho.view(capped.numel(), -1)
    part = logs.index_select(0, rows)
    part.mul_(scale.flatten()[rows].unsqueeze(1)).add_(shift.flatten()[rows].unsqueeze(1))
    part.exp2_().mul_(table.index_select(0, rows).ne_(0))
    table.index_copy_(0, rows, part)


def make_sharing(mode: str) -> BiasSharing:
    """Return the bias-sharing strategy for a mode name, or raise a clear error.

    Args:
        mode: ``"reference"``, ``"proportional"`` or ``"none"``.
    """
    if mode not in BIAS_SHARING_MODES:
        raise ValueError(
            f"bias_sharing must be one of {', '.join(map(repr, BIAS_SHARING_MODES))}; got {mode!r}"
        )
    if mode == "reference":
        return ReferenceSharing()
    return ProportionalSharing() if mode == "proportional" else NoSharing()


__all__ = [
    "BIAS_SHARING_MODES",
    "BiasSharing",
    "BiasSharingMode",
    "copy_shares",
    "FullCopyStatistics",
    "full_copy_statistics",
    "Workspace",
    "NoSharing",
    "ProportionalSharing",
    "ReferenceSharing",
    "make_sharing",
]
