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

from collections.abc import Callable
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

    def __init__(self, compiled: bool = False) -> None:
        self.compiled = compiled

    def add_bias(self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout) -> None:
        """Add the bias to the gate copy and the reference shares to the sharing copies."""
        if not layout.reference_full:
            raise ValueError("reference sharing needs the reference full copy in the layout")
        shares_of = compiled_reference_shares() if self.compiled else reference_shares
        shares = shares_of(z[:, 1:], z[:, 1:2], _copy_part(bias, z, 1, 2), bias, z.dim())
        z[:, 1:].addcmul_(shares, _copy_part(bias, z, 1, None))
        z[:, :1].add_(_copy_part(bias, z, 0, 1))


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


def reference_shares(
    z_sharing: torch.Tensor,
    z_full: torch.Tensor,
    bias_full: torch.Tensor,
    bias: torch.Tensor,
    rank: int,
) -> torch.Tensor:
    """The published shares ``s_k`` for the sharing copies (see :class:`ReferenceSharing`).

    Args:
        z_sharing: (N, S, *rest) bias-free pre-activations of the sharing copies.
        z_full: (N, 1, *rest) bias-free pre-activation of the reference full copy.
        bias_full: The bias as seen by the reference full copy (broadcastable).
        bias: The bias as given to :meth:`ReferenceSharing.add_bias` (for its shape).
        rank: Rank of the grouped tensor, ``2 + len(rest)``.

    Returns:
        (N, S, *rest) shares.
    """
    dims = _statistic_dims(bias, rank)
    q_full = _quantise(z_full, ReferenceSharing.quantum)
    full_zero = q_full == 0
    # rho_k = ceil(1000 |q(z_k) / q(z_F)|) / 1000, built in place on one full-size buffer.
    rho = z_sharing * ReferenceSharing.quantum
    rho.ceil_().div_(ReferenceSharing.quantum)
    rho.div_(q_full.masked_fill(full_zero, 1.0)).masked_fill_(full_zero, 0.0)
    rho.abs_().mul_(ReferenceSharing.ratio_quantum).ceil_().div_(ReferenceSharing.ratio_quantum)

    # l_k = log10 rho_k (0 where rho_k = 0), counted where z_k != 0 or z_F = 0.
    valid = (z_sharing != 0) | (z_full == 0)
    ell = torch.where(rho > 0, rho, 1.0).log10_().mul_(valid)
    count = valid.sum(dim=dims, keepdim=True).clamp_min(1).to(rho.dtype)
    mu = ell.sum(dim=dims, keepdim=True) / count
    second = torch.linalg.vector_norm(ell, 2, dim=dims, keepdim=True).square_() / count
    std = (second - mu.square()).clamp_min_(0.0).sqrt_()
    del ell

    spread = q_full + bias_full
    spread_mean = spread.mean(dim=dims, keepdim=True)
    r = _quantise((spread / spread_mean).abs(), ReferenceSharing.ratio_quantum)
    usable = torch.isfinite(r) & (r > 0)
    log_r = torch.log10(torch.where(usable, r, torch.ones_like(r)))
    _, sigma = _masked_mean_std(log_r, usable, dims)

    # Capping l' = mu + (l - mu) c with c = sigma / std is, in shares,
    # s = 10 ** l' = rho ** c * 10 ** (mu (1 - c)): per-channel constants on rho.
    capped = std > sigma
    if not torch.compiler.is_compiling() and not bool(capped.any()):
        return rho  # eager shortcut; a compiled graph stays branch-free
    c = torch.where(capped, sigma / std.clamp_min(torch.finfo(std.dtype).tiny), 1.0)
    rho.pow_(c.clamp_min(torch.finfo(c.dtype).tiny))  # keeps rho = 0 at 0
    return rho.mul_(torch.pow(10.0, mu * (1.0 - c)))


_COMPILED: dict[str, Callable[..., torch.Tensor]] = {}


def compiled_reference_shares() -> Callable[..., torch.Tensor]:
    """:func:`reference_shares` fused by ``torch.compile`` (built once per process).

    The published formula is some twenty elementwise steps per unit; fused, they cost about
    as much as one. The first call compiles (tens of seconds; Inductor caches the result on
    disk for later processes) and needs a C++ compiler on the machine.
    """
    if "reference" not in _COMPILED:
        _COMPILED["reference"] = torch.compile(reference_shares, dynamic=True)
    return _COMPILED["reference"]


def make_sharing(mode: str, compiled: bool = False) -> BiasSharing:
    """Return the bias-sharing strategy for a mode name, or raise a clear error.

    Args:
        mode: ``"reference"``, ``"proportional"`` or ``"none"``.
        compiled: Fuse the reference formula with ``torch.compile`` (``"reference"`` only;
            the other modes are already a few fused operations).
    """
    if mode not in BIAS_SHARING_MODES:
        raise ValueError(
            f"bias_sharing must be one of {', '.join(map(repr, BIAS_SHARING_MODES))}; got {mode!r}"
        )
    if mode == "reference":
        return ReferenceSharing(compiled=compiled)
    return ProportionalSharing() if mode == "proportional" else NoSharing()


__all__ = [
    "BIAS_SHARING_MODES",
    "BiasSharing",
    "BiasSharingMode",
    "compiled_reference_shares",
    "NoSharing",
    "ProportionalSharing",
    "ReferenceSharing",
    "make_sharing",
    "reference_shares",
]
