"""The gate rules of a CTC pass: what the full input decided elementwise, applied to every copy.

[`GateRules`][ctc_plugin.ctc.gate_rules.GateRules] is part of
[`GatedPass`][ctc_plugin.ctc.rules.GatedPass] (whose module says what every rule follows from):
ReLU patterns, rescale gates of smooth activations, max-pooling and maximum switches, products
with gate tensors and of two signals, and ``torch.where`` with a condition of the full pass. Each
rule takes the gate from the gate copy (copy 0 of each example), holds it fixed (detached) and
applies it to every copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ctc_plugin.ctc.errors import (
    UnsupportedOperationError,
    constant_shape_error,
    rows_differ_error,
)
from ctc_plugin.ctc.layout import CopyLayout


def exact_with_linear_gradient(exact: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
    """``exact``'s value with ``linear``'s derivative (``exact`` itself when none is needed).

    The gate copy carries the model's exact value, but when the pass runs with autograd (the
    ``"none"`` gradient path) its derivative must be that of the linearised network, whose
    gates are fixed. ``linear - linear.detach()`` is exactly zero, so the value is ``exact``'s
    bit for bit.
    """
    if not linear.requires_grad:
        return exact
    return exact.detach() + (linear - linear.detach())


def value_at_zero(
    activation: Callable[[torch.Tensor], torch.Tensor], original: torch.Tensor
) -> torch.Tensor | None:
    """An activation's finite ``f(0)`` at the gate copy's units, or ``None`` where it is 0.

    ``activation`` is applied to one zero, which it broadcasts with its constant arguments
    (they may differ per unit: ``clamp`` with tensor bounds), or, where it needs the shape, to
    zeros of ``original``'s shape. The value is a 0-dim tensor where it is the
    same at every unit (sigmoid's 0.5), else of ``original``'s shape; a non-finite ``f(0)``
    (``x ** -1``) counts as 0 (the activation is not split there). ``None`` where it is 0 at
    every unit (ReLU's family, SiLU, GELU, tanh, ...), so nothing changes for them.
    """
    try:  # one zero first: an elementwise activation broadcasts it with its own constants
        at_zero = activation(original.new_zeros(()))
        at_zero.expand(original.shape)
    except (RuntimeError, TypeError, ValueError, IndexError):  # one that needs the shape
        at_zero = activation(torch.zeros_like(original))
    at_zero = at_zero.detach().to(original.dtype)
    at_zero = torch.where(at_zero.isfinite(), at_zero, 0.0).expand(original.shape)
    flat = at_zero.flatten()
    if not flat.numel():
        return None
    nonzero, uniform = torch.stack([flat.any(), (flat == flat[0]).all()]).tolist()  # one sync
    if not nonzero:
        return None
    return flat[0] if uniform else at_zero


class GateRules:
    """The gate rules of [`GatedPass`][ctc_plugin.ctc.rules.GatedPass].

    A part of `GatedPass`, not used on its own: the rules read the pass's ``layout`` and
    ``exits`` and call its ``tag``, ``affine``, ``mark_gate``, ``is_propagated`` and
    ``check_constant``.
    """

    layout: CopyLayout
    exits: list[str]

    def _apply_gate(self, x: torch.Tensor, gate: torch.Tensor, inplace: bool) -> torch.Tensor:
        """Every copy times ``gate`` (broadcast over the copies); into ``x`` with ``inplace``."""
        grouped = self.layout.group(x)
        if inplace:  # the model's own in-place activation: x must hold the result
            if grouped.shape[1] == 1:  # one copy (the gradient path): x itself, not a view,
                x.mul_(gate.reshape(x.shape))  # which autograd would copy back in backward
            else:
                grouped.mul_(gate)
            return self.tag(x)
        return self.tag(self.layout.ungroup(grouped * gate, x))

    def relu_gate(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """ReLU: every copy passes where the original pre-activation was positive."""
        gate = self.layout.group(x)[:, :1] > 0
        return self._apply_gate(x, gate, inplace)

    def leaky_relu_gate(
        self, x: torch.Tensor, negative_slope: float | torch.Tensor, inplace: bool = False
    ) -> torch.Tensor:
        """LeakyReLU: slope 1 where the original was positive, ``negative_slope`` elsewhere.

        ``negative_slope`` may be a tensor broadcastable to ``x``'s rest (aligned to its
        trailing dims): PReLU's learned slope per channel, held fixed.
        """
        original = self.layout.group(x)[:, :1]
        if isinstance(negative_slope, torch.Tensor):
            slope = negative_slope.detach().to(original.dtype)
        else:
            slope = original.new_tensor(negative_slope)
        gate = torch.where(original > 0, 1.0, slope)
        return self._apply_gate(x, gate, inplace)

    def rescale_gate(
        self,
        x: torch.Tensor,
        activation: Callable[[torch.Tensor], torch.Tensor],
        gate_origin: str | None = None,
        inplace: bool = False,
    ) -> torch.Tensor:
        """Smooth elementwise activation as a rescale gate of the original pass.

        The gate copy gets the activation's exact output ``y = f(x)``. Where ``f(0) = 0``
        (ReLU's family, SiLU, GELU, tanh, ...) every other copy is multiplied by ``y / x``
        (0 where the original input is exactly 0). Where ``f(0) != 0`` (sigmoid, softplus,
        erfc, ...) the activation is split into ``f(0) + (f(x) - f(0))``: every copy is
        multiplied by the bounded ``(y - f(0)) / x`` (0 where ``x`` is 0), and ``f(0)``, an
        input-independent term, is a bias shared among the copies as any other
        ([`affine`][ctc_plugin.ctc.rules.GatedPass.affine]), as it is in the same activation
        written ``0.5 + 0.5 * tanh(x / 2)``. A non-finite ``f(0)`` (``x ** -1``) is not split.

        Args:
            x: The propagated pre-activation.
            activation: The activation, applied to (a view of) the gate copy and to zeros of
                its shape; it must not change its argument.
            gate_origin: For a squashing activation (sigmoid, tanh, ...), its name: the result
                is then also a gate tensor that may multiply the signal
                ([`gate_product`][ctc_plugin.ctc.gate_rules.GateRules.gate_product]).
            inplace: Write the result into ``x`` (an in-place activation of the model).
        """
        grouped = self.layout.group(x)
        original = grouped[:, 0]
        y = activation(original)
        at_zero = value_at_zero(activation, original)
        rise = y if at_zero is None else y - at_zero
        nonzero = original != 0
        gate = torch.where(nonzero, rise / torch.where(nonzero, original, 1.0), 0.0).detach()
        if inplace:
            out, scaled = x, grouped.mul_(gate.unsqueeze(1))
        else:
            scaled = grouped * gate.unsqueeze(1)
            out = self.layout.ungroup(scaled, x)
        if at_zero is not None:  # f(0): a bias, the gate copy's whole (its value is set below)
            shared = self.affine(out, at_zero if at_zero.dim() == 0 else at_zero.unsqueeze(1))
            out = out.copy_(shared) if inplace and shared is not out else shared
            scaled = self.layout.group(out)
        scaled[:, 0] = exact_with_linear_gradient(y, scaled[:, 0])
        out = self.tag(out)
        return out if gate_origin is None else self.mark_gate(out, gate_origin)

    def max_pool_switches(
        self, x: torch.Tensor, pool_with_indices: Callable[[torch.Tensor], Any]
    ) -> torch.Tensor:
        """Max pooling: every copy takes the values at the original pass's argmax positions.

        Args:
            x: (N*C, channels, *spatial) propagated input, or (N*C*m, channels, *spatial) with
                each copy's rows merged with another dim (windows: SAM 2's HieraDet pools the
                queries of its windows), each of the ``m`` rows taking the switches of the gate
                copy's same row.
            pool_with_indices: The pooling operation with ``return_indices=True`` bound, taking
                an (N[*m], channels, *spatial) tensor and returning ``(values, indices)``.
        """
        if x.shape[0] % self.layout.batch:
            raise UnsupportedOperationError(
                "max pooling", "its input merges the copies with another dimension"
            )
        grouped = self.layout.group(x)  # (N, C, [m,] channels, *spatial)
        rows = grouped.dim() - x.dim()  # 1, or 2 with the copies' rows merged
        gate = grouped[:, 0]
        _, indices = pool_with_indices(gate.flatten(0, rows - 1))
        indices = indices.unflatten(0, gate.shape[:rows])  # (N, [m,] channels, *out)
        flat = grouped.flatten(rows + 2) if x.dim() > 2 else grouped.unsqueeze(-1)
        index = indices.flatten(rows + 1).unsqueeze(1)  # (N, 1, [m,] channels, out)
        index = index.expand(flat.shape[0], flat.shape[1], *index.shape[2:])
        pooled = flat.gather(-1, index)
        return self.tag(pooled.reshape(-1, *indices.shape[rows:]))

    def max_switches(
        self, x: torch.Tensor, dims: tuple[int, ...], keepdim: bool, largest: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A maximum (minimum) over dims of one example: the full pass's switches.

        ``x.amax(1, keepdim=True)``, ``torch.max(x, dim=1)`` (CBAM's spatial attention): as max
        pooling's switches, the gate copy's argmax (argmin) over ``dims`` is taken, and every
        copy takes its own entries there. Summed over a partition's copies, the result is the
        model's maximum.

        Args:
            x: The propagated input.
            dims: The dims reduced, each in ``1 .. x.dim() - 1`` (never dim 0, the copies).
            keepdim: Keep the reduced dims with size 1, as torch's ``keepdim``.
            largest: The maximum; ``False`` for the minimum.

        Returns:
            The values (tagged) and the gate copy's indices along the reduced dims (flattened,
            for several), given to every copy as ``x.max(1)`` returns them (not tagged).
        """
        grouped = self.layout.group(x)
        offset = grouped.dim() - x.dim()  # 1, or 2 where the copies' rows are merged
        axes = sorted(d + offset for d in dims)
        last = list(range(grouped.dim() - len(axes), grouped.dim()))
        moved = grouped.movedim(axes, last).flatten(-len(axes))  # (N, C, *kept, reduced)
        gate = moved[:, :1].detach()
        index = (gate.argmax if largest else gate.argmin)(-1, keepdim=True)
        values = moved.gather(-1, index.expand(*moved.shape[:-1], 1)).squeeze(-1)
        indices = index.squeeze(-1).expand(values.shape)
        if keepdim:
            for axis in axes:
                values, indices = values.unsqueeze(axis), indices.unsqueeze(axis)
        flat = (-1, *values.shape[offset + 1 :])
        return self.tag(values.reshape(flat)), indices.reshape(flat)

    def gate_product(
        self, signal: torch.Tensor, gate: torch.Tensor, divide: bool = False, inplace: bool = False
    ) -> torch.Tensor:
        """A product of the signal with a gate tensor: each copy times the gate copy's factor.

        Squeeze-excitation (``x * sigmoid(fc(pool(x)))``), gated units and ``x * sigmoid(x)``
        written out: the full pass decided the factor, so every copy of ``signal`` is
        multiplied by the value the gate copy of ``gate`` holds (divided by it with
        ``divide``). The result is linear in the copies and keeps their zeros.

        Args:
            signal: The propagated signal.
            gate: A propagated gate tensor
                ([`gate_mark`][ctc_plugin.ctc.rules.GatedPass.gate_mark]), broadcastable to
                ``signal``.
            divide: ``signal / gate`` instead of ``signal * gate``.
            inplace: Write the result into ``signal`` (``signal.mul_(gate)``).
        """
        grouped, factor = self.layout.group(signal), self.layout.group(gate)[:, :1].detach()
        if factor.dim() != grouped.dim():
            raise UnsupportedOperationError(
                "a product with a gate tensor",
                f"the gate of shape {tuple(gate.shape)} and the signal of shape "
                f"{tuple(signal.shape)} do not share the batch dimension",
            )
        if inplace:
            (grouped.div_ if divide else grouped.mul_)(factor)
            return self.tag(signal)
        out = grouped / factor if divide else grouped * factor
        return self.tag(self.layout.ungroup(out, signal))

    def _grouped_pair(
        self, first: torch.Tensor, second: torch.Tensor, operation: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two propagated operands grouped (N, C, ...); refused where their copies do not meet."""
        a, b = self.layout.group(first), self.layout.group(second)
        if a.dim() != b.dim():
            raise UnsupportedOperationError(
                operation,
                f"its operands of shapes {tuple(first.shape)} and {tuple(second.shape)} do not "
                "share the batch dimension",
            )
        return a, b

    def signal_product(
        self, first: torch.Tensor, second: torch.Tensor, inplace: bool = False
    ) -> torch.Tensor:
        """A product of two signals, neither a gate tensor: half of it to each factor's copies.

        SwiGLU's ``silu(a) * b`` and other multiplicative units: copy ``k`` of ``a * b`` is
        ``(a_k * b_0 + a_0 * b_k) / 2``, with ``a_0``, ``b_0`` the gate copy's values held
        fixed. It is linear in the copies, the gate copy gets the model's product exactly, and
        where the copies of each factor add up to its gate copy, so do the products' (the
        uniform rule of AttnLRP for a product of two signals: each factor takes half). The
        gradient of the ``"none"`` path is that of the product with each factor's other factor
        held fixed, times one half.

        Args:
            first: The first propagated factor.
            second: The second propagated factor, broadcastable to ``first``.
            inplace: Write the result into ``first`` (``a.mul_(b)``, ``a *= b``).
        """
        a, b = self._grouped_pair(first, second, "a product of two input-dependent tensors")
        a0, b0 = a[:, :1].detach(), b[:, :1].detach()
        if inplace:  # the fixed factors must not change when first is written
            a0, b0 = a0.clone(), b0.clone()
        product = (a * b0 + a0 * b) / 2
        out = self.layout.ungroup(product, first if product.dim() == a.dim() else second)
        if inplace:
            return self.tag(first.copy_(out))
        return self.tag(out)

    def switch(self, first: torch.Tensor, second: torch.Tensor, largest: bool) -> torch.Tensor:
        """The elementwise maximum (minimum) of two signals: the full pass's switches.

        Every copy takes its entry of ``first`` where the gate copy's ``first`` is at least
        (at most) its ``second``, and its entry of ``second`` elsewhere, as max pooling takes
        the gate copy's argmax: summed over a partition's copies, the result is the model's.
        """
        a, b = self._grouped_pair(first, second, "an elementwise maximum of two signals")
        a0, b0 = a[:, :1].detach(), b[:, :1].detach()
        take_first = a0 >= b0 if largest else a0 <= b0
        picked = torch.where(take_first, a, b)
        return self.tag(self.layout.ungroup(picked, first))

    def select(self, condition: Any, chosen: Any, other: Any, operation: str) -> torch.Tensor:
        """``torch.where(condition, chosen, other)`` with a condition the copies do not change.

        ``condition`` is a constant or the full pass's decision (a gate-only tensor such as
        ``x > 0``, whose rows are the gate copy's): every copy takes its own entries of
        ``chosen`` where it holds and of ``other`` elsewhere. A constant operand is a bias
        where it is taken, shared among the copies as any other
        (``torch.where(x > 0, x, 0.1)``).

        Args:
            condition: A boolean tensor; propagated (gate-only) or constant.
            chosen: Where ``condition`` holds: a propagated signal or a constant (number or
                tensor).
            other: Elsewhere: as ``chosen``; at least one of the two is propagated.
            operation: The torch function, named in refusals.
        """
        signal = chosen if self.is_propagated(chosen) else other
        grouped = self.layout.group(signal)
        zero = grouped.new_zeros(())

        def constant_part(value: Any) -> torch.Tensor:
            if self.is_propagated(value):
                return zero
            if isinstance(value, torch.Tensor):
                return self._per_example(value, signal, operation).to(grouped.dtype)
            return grouped.new_tensor(value)

        if self.is_propagated(condition):
            fixed = self.layout.group(condition)[:, :1]
            if fixed.dim() != grouped.dim():
                raise UnsupportedOperationError(
                    operation,
                    f"its condition of shape {tuple(condition.shape)} and the signal of shape "
                    f"{tuple(signal.shape)} do not share the batch dimension",
                )
        else:
            fixed = self._per_example(condition, signal, operation)
        operands = (chosen, other)
        constants = [constant_part(value) for value in operands]
        # a constant's copies are zeros of its shape, which may broadcast the signal's
        copies = [
            self.layout.group(value) if self.is_propagated(value) else torch.zeros_like(constant)
            for value, constant in zip(operands, constants)
        ]
        out = self.layout.ungroup(torch.where(fixed, *copies), signal)
        if all(self.is_propagated(value) for value in operands):
            return self.tag(out)
        return self.affine(out, torch.where(fixed, *constants))

    def _per_example(self, value: torch.Tensor, signal: torch.Tensor, operation: str) -> Any:
        """A constant operand, broadcastable to the grouped (N, C, ...) ``signal``.

        One row per copy (made from the pass's batch size) is read as one row per example,
        after checking that the copies' rows are equal; a leading 1 or fewer dims broadcast.
        """
        if value.dim() < signal.dim():
            return value
        if value.dim() == signal.dim() and value.shape[0] == 1:
            return value[0]
        if value.dim() > signal.dim() or value.shape[0] % self.layout.batch:
            raise constant_shape_error(
                operation, tuple(value.shape), tuple(signal.shape), self.layout.batch
            )
        grouped = self.layout.group(value)
        if value.is_floating_point():
            self.check_constant(value, signal, operation)
        elif not bool((grouped == grouped[:, :1]).all()):
            raise rows_differ_error(operation, self.exits)
        return grouped[:, :1]
