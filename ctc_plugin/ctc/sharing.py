"""Bias sharing: how each bias is divided among the copies of an example (the readable spec).

A layer with a bias computes ``z + b``. In the CTC pass each copy ``k`` computes its bias-free
part ``z_k`` and receives ``b * s_k``; the gate copy always receives the whole bias (``s_0 = 1``:
it is the model's real forward pass). The three modes differ in the shares ``s_k`` of the other
copies, the *sharing copies*:

- ``"none"``: ``s_k = 0``. The pass is the network linearised at the input with its gates
  fixed, so a feature's score is gradient x input summed over the feature.
- ``"proportional"``: ``s_k = |z_k| / sum_j |z_j|`` per unit over the sharing copies (an equal
  split among the present copies where every ``z_j`` is zero). Shares sum to one, so over a
  partition the scores add up to the target logit (conservative).
- ``"reference"``: the published formula (quantisation, log-ratios, spread capping); see
  [`ReferenceSharing`][ctc_plugin.ctc.sharing.ReferenceSharing].

This module is the specification: each mode computes its shares as a dense tensor, out of place,
in the words of the paper. The pass uses the faster, equal implementations of
[`ctc_plugin.ctc.speedups`][ctc_plugin.ctc.speedups] unless told otherwise; tests hold them to
these.

Tensors are *grouped*: ``z`` has shape (N, C, *rest) (examples, copies, units). ``bias`` is
broadcastable to it: either aligned with ``rest`` (a layer's bias) or carrying the (N, C) leading
dimensions (a per-example constant).
"""

from __future__ import annotations

from typing import Protocol

import torch

from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.modes import (
    BIAS_SHARING_MODES,
    DEFAULT_BIAS_SHARING,
    BiasSharingMode,
    check_mode,
)


class BiasSharing(Protocol):
    """Adds the shares of a bias to the copies of a grouped pre-activation.

    Attributes:
        name: The mode (``"reference"``, ``"proportional"`` or ``"none"``).
        in_place: ``add_bias`` writes into ``z`` and returns it (the fast implementations);
            otherwise it returns a new tensor and leaves ``z`` alone.
    """

    name: str
    in_place: bool

    def add_bias(self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout) -> torch.Tensor:
        """``z_k + s_k * bias`` for every copy ``k`` of the grouped (N, C, *rest) ``z``."""


class SpecSharing:
    """A mode of the spec: ``z_k + s_k * b`` with the mode's shares ``s_k``."""

    name = ""
    in_place = False

    def add_bias(self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout) -> torch.Tensor:
        """Every copy plus its share of the bias, as a new tensor."""
        return z + self.shares(z, bias, layout) * bias

    def shares(self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout) -> torch.Tensor:
        """The (N, C, *rest) shares ``s_k``: 1 for the gate copy, the mode's for the others."""
        gate = torch.ones_like(z[:, :1])
        return torch.cat([gate, self.sharing_shares(z, bias, layout)], dim=1)

    def sharing_shares(
        self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout
    ) -> torch.Tensor:
        """The (N, C - 1, *rest) shares of the sharing copies ``z[:, 1:]``."""
        raise NotImplementedError


class NoSharing(SpecSharing):
    """``"none"``: sharing copies get no bias; the pass is gradient x input per feature."""

    name = "none"

    def sharing_shares(
        self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout
    ) -> torch.Tensor:
        """``s_k = 0``."""
        return torch.zeros_like(z[:, 1:])


class ProportionalSharing(SpecSharing):
    """``"proportional"``: each unit's bias split by ``|z_k| / sum_j |z_j|`` (conservative)."""

    name = "proportional"

    def sharing_shares(
        self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout
    ) -> torch.Tensor:
        """``s_k = |z_k| / sum_j |z_j|``; equal shares of the present copies where the sum is 0.

        For 16-bit float copies in float32 (`formula_dtype`: a float16 sum may exceed its
        range), then rounded back: every share is at most 1.
        """
        magnitude = z[:, 1:].abs()
        magnitude = magnitude.to(formula_dtype(magnitude))
        total = magnitude.sum(dim=1, keepdim=True)
        proportional = magnitude / torch.where(total == 0, 1.0, total)
        shares = torch.where(total == 0, equal_shares(z, layout), proportional)
        return shares.to(z.dtype)


def equal_shares(z: torch.Tensor, layout: CopyLayout) -> torch.Tensor:
    """(N or 1, C - 1, *1) equal shares among the sharing copies that carry a present feature."""
    return equal_weights(z[:, 1:], layout)


def equal_weights(sharing: torch.Tensor, layout: CopyLayout) -> torch.Tensor:
    """(N or 1, S, *1) equal weights of the (N, S, *rest) sharing copies that carry a feature."""
    ones = [1] * (sharing.dim() - 2)
    if layout.presence is None:
        copies = sharing.shape[1]
        return sharing.new_full((1, copies, *ones), 1.0 / max(copies, 1))
    present = layout.presence.to(sharing.dtype)
    return (present / present.sum(dim=1, keepdim=True).clamp_min(1.0)).view(*present.shape, *ones)


class ReferenceSharing(SpecSharing):
    """``"reference"``: the published scaling mechanism of CTC, with its quantisation.

    With ``q(u) = ceil(10u)/10`` and ``z_F`` the reference full copy's pre-activation (copy 1):

    - ``rho_k = ceil(1000 |q(z_k) / q(z_F)|) / 1000`` (0 where ``q(z_F) = 0``),
    - ``l_k = log10(rho_k)`` (0 where ``rho_k = 0``),
    - reference spread ``sigma = std(log10 r)`` with ``n = q(z_F) + b`` and
      ``r = ceil(1000 |n / mean(n)|) / 1000`` (entries with ``r = 0`` left out),
    - ``mu_k, std_k`` = mean and std of ``l_k`` over the units where ``z_k != 0`` or ``z_F = 0``,
    - ``l'_k = mu_k + (l_k - mu_k) sigma / std_k`` where ``std_k > sigma``, else ``l_k``,
    - ``s_k = 10 ** l'_k`` (0 where ``rho_k = 0``).

    Every sharing copy gets the formula, the reference full copy too (its ratios are 1 wherever
    ``q(z_F) != 0`` and have no spread, so ``s_F = [q(z_F) != 0]``).

    Statistics run per channel over positions when the bias is per channel (convolutions,
    BatchNorm) and over all units when the bias differs per unit (dense layers). Standard
    deviations are population (ddof = 0) ones, as in NumPy, computed in float64
    ([`statistics_dtype`][ctc_plugin.ctc.sharing.statistics_dtype]). ``rho_k`` is computed as
    ``ceil(1000 |a_k| / |a_F|) / 1000`` with the whole numbers ``a_k = ceil(10 z_k)`` and
    ``a_F = ceil(10 z_F)`` (not to be confused with the bias ``b``), so that a ratio which is a
    multiple of 1/1000 gives exactly that value (dividing the rounded ``q`` values first can
    step over it).
    """

    name = "reference"

    def sharing_shares(
        self, z: torch.Tensor, bias: torch.Tensor, layout: CopyLayout
    ) -> torch.Tensor:
        """The published shares of every sharing copy."""
        if not layout.reference_full:
            raise ValueError("reference sharing needs the reference full copy in the layout")
        dims = statistic_dims(bias, z.dim())
        z_full = z[:, 1:2]
        sigma = reference_spread(z_full, copy_part(bias, z, 1, 2), dims)
        return reference_shares(z[:, 1:], z_full, sigma, dims)


def formula_dtype(values: torch.Tensor) -> torch.dtype:
    """The dtype the sharing formulas compute ``values``' shares in: float32 for 16-bit floats.

    float16's range ends at 65504, which both formulas pass with values of a finite pass: the
    proportional sum ``sum_j |z_j|`` of large magnitudes that cancel in the signal (and the
    quotient ``bias / sum`` of small ones), and the reference ratio's ``ceil(10 z_k) * 1000``
    from ``z_k > 6.55`` on. Every share is at most the bias (proportional) or a ratio of the
    copies' values (reference), so it is rounded back to float16. bfloat16 has float32's
    range but 8 bits of precision: ``ceil(10 z) * 1000`` (70000 for ``z = 7``) is not exact
    in it, and the reference full copy's own ratio came out 1.0078, not 1. Other dtypes as they
    are.
    """
    return torch.float32 if values.dtype in (torch.float16, torch.bfloat16) else values.dtype


def tenfold_quantised(u: torch.Tensor) -> torch.Tensor:
    """``10 q(u) = ceil(10 u)``, a whole number."""
    return (u * 10.0).ceil()


def reference_spread(
    z_full: torch.Tensor, bias_full: torch.Tensor, dims: tuple[int, ...]
) -> torch.Tensor:
    """``sigma = std(log10 r)`` of the reference full copy, with size 1 along ``dims`` (float64).

    ``n = q(z_F) + b``, ``r = ceil(1000 |n / mean(n)|) / 1000``; entries with ``r = 0`` are
    left out, and a group whose ``mean(n)`` is 0 has ``sigma = 0``. 16-bit float values in
    float32 (`formula_dtype`).
    """
    z_full, bias_full = z_full.to(formula_dtype(z_full)), bias_full.to(formula_dtype(bias_full))
    tenfold = tenfold_quantised(z_full)
    n = tenfold / 10.0 + bias_full
    mean = spread_mean(tenfold, bias_full, dims)
    r = ((n / torch.where(mean == 0, 1.0, mean)).abs() * 1000.0).ceil() / 1000.0
    log_r = torch.where(r > 0, r, 1.0).log10()
    _, sigma = masked_mean_std(log_r, r > 0, dims)
    return torch.where(mean == 0, 0.0, sigma)


def spread_mean(tenfold: torch.Tensor, bias: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``mean(n)`` over ``dims`` of ``n = tenfold / 10 + bias``, whatever the memory layout.

    Where some ``n`` equal their mean, ``n / mean(n)`` was 1 give or take an ulp that depended
    on the order of the mean's sum, which follows how the maps lie in memory (channels-last or
    not, packed copies), and ``ceil`` turned that ulp into a ratio of 1.001. The mean is taken of
    the whole numbers ``tenfold``, whose sum is exact in any order (below 2**24 in float32), and
    then divided and shifted as ``n`` is, so an ``n`` that equals it gives exactly 1. A bias
    constant along ``dims`` (a layer's bias per channel) is its own mean.
    """
    mean = tenfold.mean(dim=dims, keepdim=True) / 10.0
    offset = tenfold.dim() - bias.dim()  # the bias's dims are aligned to the trailing ones
    if all([d < offset or bias.shape[d - offset] == 1 for d in dims]):  # a list: compiles
        return mean + bias
    return mean + torch.broadcast_to(bias, tenfold.shape).mean(dim=dims, keepdim=True)


def reference_shares(
    z_copies: torch.Tensor, z_full: torch.Tensor, sigma: torch.Tensor, dims: tuple[int, ...]
) -> torch.Tensor:
    """The shares ``s_k`` of the (N, S, *rest) copies ``z_copies`` (see `ReferenceSharing`).

    16-bit float copies in float32 (`formula_dtype`), the shares rounded back.
    """
    wide = formula_dtype(z_copies)
    a, b = tenfold_quantised(z_copies.to(wide)), tenfold_quantised(z_full.to(wide))
    rho = torch.where(b != 0, (a * 1000.0 / b).abs().ceil() / 1000.0, 0.0)
    log_ratio = torch.where(rho > 0, rho, 1.0).log10()  # l_k, 0 where rho_k = 0
    valid = (z_copies != 0) | (z_full == 0)
    mu, std = masked_mean_std(log_ratio, valid, dims)
    capped = std > sigma
    c = torch.where(capped, sigma / torch.where(capped, std, 1.0), 1.0)
    capped_log_ratio = mu + (log_ratio.to(mu.dtype) - mu) * c
    return torch.where(rho > 0, 10.0**capped_log_ratio, 0.0).to(z_copies.dtype)


def masked_mean_std(
    values: torch.Tensor, counted: torch.Tensor, dims: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std over ``dims`` of the ``counted`` entries, in `statistics_dtype`.

    Groups without a counted entry get 0.
    """
    wide = values.to(statistics_dtype(values))
    weight = counted.to(wide.dtype)
    count = weight.sum(dim=dims, keepdim=True).clamp_min(1.0)
    mean = (wide * weight).sum(dim=dims, keepdim=True) / count
    variance = ((wide - mean).square() * weight).sum(dim=dims, keepdim=True) / count
    return mean, variance.sqrt()


def statistics_dtype(values: torch.Tensor) -> torch.dtype:
    """The dtype the reference statistics are computed in: float64 where the device has it.

    A float32 sum depends on the order of its terms, and that order on how the copies are laid
    out (blocks, packed boxes, how many copies travel together), so a float32 statistic would
    change by an ulp with ``perturbations_per_eval``, which the quantisation of the next layer
    can turn into a visible difference. MPS has no float64.
    """
    return values.dtype if values.device.type == "mps" else torch.float64


def unexpanded(bias: torch.Tensor) -> torch.Tensor:
    """``bias`` with size 1 along every dim it was expanded along (stride 0): the same bias.

    ``b.expand(B, T, C)`` of a ``(C,)`` bias (as ``torch.baddbmm(b.expand(...), x, w)`` takes
    it) holds one value per channel, as ``b`` does; read from its shape, `statistic_dims` would
    run the reference statistics over every unit instead of per channel, so the same layer
    written with ``@`` and ``+ b`` got other ``"reference"`` shares. A view, nothing copied.
    """
    if bias.dim() == 0 or all(
        stride or size == 1 for stride, size in zip(bias.stride(), bias.shape)
    ):
        return bias
    return bias[
        tuple(
            slice(0, 1) if not s and n > 1 else slice(None)
            for s, n in zip(bias.stride(), bias.shape)
        )
    ]


def statistic_dims(bias: torch.Tensor, rank: int) -> tuple[int, ...]:
    """Dims of a grouped (N, C, *rest) tensor over which the reference statistics run.

    Positions over which the bias is constant (its broadcast dims); all units of ``rest`` when
    the bias differs per unit.
    """
    rest = rank - 2
    trailing = list(bias.shape[-rest:]) if bias.dim() else []
    trailing = [1] * (rest - len(trailing)) + trailing
    dims = tuple(2 + i for i, size in enumerate(trailing) if size == 1)
    return dims if dims and len(dims) < rest else tuple(range(2, rank))


def copy_part(bias: torch.Tensor, z: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
    """The slice of a bias that belongs to copies ``start:stop`` (or the bias itself)."""
    if bias.dim() == z.dim() and bias.shape[1] != 1:
        return bias[:, start:stop]
    return bias


def make_sharing(mode: str) -> BiasSharing:
    """The spec's bias sharing for a mode name, or raise a clear error.

    Args:
        mode: ``"reference"``, ``"proportional"`` or ``"none"``.
    """
    check_mode(mode)
    return {"reference": ReferenceSharing, "proportional": ProportionalSharing}.get(
        mode, NoSharing
    )()


__all__ = [
    "BIAS_SHARING_MODES",
    "DEFAULT_BIAS_SHARING",
    "BiasSharing",
    "BiasSharingMode",
    "NoSharing",
    "ProportionalSharing",
    "ReferenceSharing",
    "SpecSharing",
    "make_sharing",
    "formula_dtype",
    "reference_shares",
    "reference_spread",
    "spread_mean",
    "masked_mean_std",
    "statistic_dims",
    "unexpanded",
    "statistics_dtype",
    "tenfold_quantised",
    "equal_shares",
    "equal_weights",
]
