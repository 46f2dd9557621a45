"""The normalisation rules of a CTC pass: statistics of the full input as gates.

[`NormalisationRules`][ctc_plugin.ctc.norm_rules.NormalisationRules] is part of
[`GatedPass`][ctc_plugin.ctc.rules.GatedPass] (whose module says what every rule follows from):
LayerNorm, RMSNorm, GroupNorm and InstanceNorm with the input's statistics centre each copy on its
own mean (subtracting it is linear) and divide it by the gate copy's standard deviation (a gate);
the weight scales every copy and the shift is a bias shared among the copies.
"""

from __future__ import annotations

import torch

from ctc_plugin.ctc.layout import CopyLayout


class NormalisationRules:
    """The normalisation rules of [`GatedPass`][ctc_plugin.ctc.rules.GatedPass].

    A part of `GatedPass`, not used on its own: the rules read the pass's ``layout`` and call its
    ``tag`` and ``affine``.
    """

    layout: CopyLayout

    def normalise(
        self,
        x: torch.Tensor,
        dims: tuple[int, ...],
        eps: float,
        centre: bool = True,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalisation statistics as gates, over the (negative) ``dims`` of every copy.

        Subtracting the mean is linear, so each copy is centred on its own mean; the standard
        deviation ``sqrt(var + eps)`` (the root mean square when ``centre`` is off) is the gate
        copy's, so dividing by it is a gate. Summed over a partition's copies, the result is the
        gate copy's, which is the model's normalised value. The result is contiguous, as
        torch's normalisations return it.

        Args:
            x: The propagated input.
            dims: The dims the statistics run over, counted from the end (negative).
            eps: Added to the variance, as the model's normalisation does.
            centre: Subtract the mean (LayerNorm, GroupNorm, InstanceNorm); off for RMSNorm.
            weight: The normalisation's weight, broadcastable to ``x`` (aligned to its trailing
                dims), applied with the statistics; ``None`` for none.
        """
        if any(d >= 0 for d in dims):
            raise ValueError(f"normalise takes dims counted from the end; got {dims}")
        grouped = self.layout.group(x)
        gate = grouped[:, :1]
        if centre:
            variance = gate.var(dim=dims, correction=0, keepdim=True)
        else:
            variance = gate.square().mean(dim=dims, keepdim=True)
        factor = torch.rsqrt(variance + eps).detach()
        if weight is not None:
            factor = factor * weight
        centred = grouped - grouped.mean(dim=dims, keepdim=True) if centre else grouped
        out = (centred * factor).contiguous()
        return self.tag(self.layout.ungroup(out, x))

    def layer_norm(
        self,
        x: torch.Tensor,
        normalized_shape: tuple[int, ...],
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
        centre: bool = True,
    ) -> torch.Tensor:
        """``layer_norm`` (``rms_norm`` with ``centre`` off) over the trailing dims.

        The weight multiplies every copy; the shift is a bias shared among the copies.
        """
        dims = tuple(range(-len(normalized_shape), 0))
        return self.affine(self.normalise(x, dims, eps, centre, weight), bias)

    def group_norm(
        self,
        x: torch.Tensor,
        num_groups: int,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> torch.Tensor:
        """``group_norm`` of a (N*C, channels, *spatial) tensor, with per-channel affine."""
        grouped = x.unflatten(1, (num_groups, x.shape[1] // num_groups)).flatten(2)
        out = self.normalise(grouped, (-1,), eps).view(x.shape)
        return self._scale_and_shift(out, *_per_channel(weight, bias, x))

    def instance_norm(
        self,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> torch.Tensor:
        """``instance_norm`` with the input's statistics, per channel over the spatial dims."""
        weight, bias = _per_channel(weight, bias, x)
        return self.affine(
            self.normalise(x, tuple(range(2 - x.dim(), 0)), eps, weight=weight), bias
        )

    def _scale_and_shift(
        self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """A normalisation's affine part: weight on every copy, the shift as a shared bias."""
        if weight is not None:
            x = x * weight
        return self.affine(x, bias)


def _per_channel(
    weight: torch.Tensor | None, bias: torch.Tensor | None, x: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-channel (C,) weight and bias aligned to a (N*C, C, *spatial) tensor."""
    shape = (-1, *([1] * (x.dim() - 2)))
    return (
        None if weight is None else weight.view(shape),
        None if bias is None else bias.view(shape),
    )
