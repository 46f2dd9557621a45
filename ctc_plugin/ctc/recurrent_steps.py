"""The operations of a recurrent layer's step, as CTC's rules or as plain tensor operations.

[`recurrent`][ctc_plugin.ctc.recurrent] writes the steps of ``nn.LSTM``, ``nn.GRU`` and
``nn.RNN`` once, against the methods of [`Steps`][ctc_plugin.ctc.recurrent_steps.Steps]: one
rule of the pass per operation (the specification). A pass runs
[`TensorSteps`][ctc_plugin.ctc.recurrent_steps.TensorSteps] (``Speedups.tensor_steps``), the
same values in plain tensor operations on the grouped copies, which a layer of ``L`` steps does
not pay the rules' per-call work for ``L`` times. ``tests/ctc/test_recurrent_steps.py`` holds
the two equal.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ctc_plugin.ctc.gate_rules import exact_with_linear_gradient
from ctc_plugin.ctc.rules import GatedPass


class Steps:
    """The operations of a step as CTC's rules, one call of the pass each: the specification.

    One [`GatedPass`][ctc_plugin.ctc.rules.GatedPass] call per operation. The cells
    (`lstm_cell`, `gru_cell`, `rnn_cell`) are written once against these methods. Here signals
    are flat (B, size) propagated tensors and gates are the full pass's gate tensors, as any
    other operation of the pass meets them; each call groups, checks and tags.
    [`TensorSteps`][ctc_plugin.ctc.recurrent_steps.TensorSteps] computes the same values in plain
    tensor operations, which is what a pass runs.

    Attributes:
        ctx: The pass.
    """

    def __init__(self, ctx: GatedPass) -> None:
        self.ctx = ctx

    @property
    def time_dim(self) -> int:
        """The dim of `project`'s result that runs over the steps."""
        return 1

    def project(self, sequence: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``W x_t`` of every step of a (B, L, features) sequence: (B, L, size), one product."""
        return self.ctx.linear(F.linear, (sequence, weight), {})

    def enter(self, signal: torch.Tensor) -> torch.Tensor:
        """A flat (B, size) propagated signal (an initial state) as the steps take it."""
        return signal

    def leave(self, signal: torch.Tensor) -> torch.Tensor:
        """A signal of the steps as a flat (B, size) propagated tensor (a final state)."""
        return signal

    def outputs(self, signals: list[torch.Tensor]) -> torch.Tensor:
        """The hidden states of every step, in order, as a (B, L, size) propagated tensor."""
        return self.ctx.tag(torch.stack(signals, dim=1))

    def affine(self, bias_free: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """A new bias-free signal plus its bias shared among the copies (``None``: no bias)."""
        return self.ctx.affine(bias_free, bias)

    def sigmoid_gates(self, z: torch.Tensor, origin: str) -> torch.Tensor:
        """``sigmoid`` of the gate copy's ``z``: gates (``origin`` names them)."""
        return self.ctx.full_pass_gate(z, torch.sigmoid, origin)

    def rescale(
        self, x: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """A smooth activation: every copy times the gate copy's ``activation(x) / x``."""
        return self.ctx.rescale_gate(x, activation)

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        """``relu``: every copy where the gate copy's ``x`` is positive."""
        return self.ctx.relu_gate(x)

    def product(self, signal: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Every copy of ``signal`` times the gate copy's ``gate``."""
        return self.ctx.gate_product(signal, gate)

    def add(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """The sum of two signals."""
        return self.ctx.tag(first + second)

    def gated_bias(self, gate: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
        """The gate copy's ``gate`` times a per-example (N, 1, [m,] size) constant: a bias."""
        return self.ctx.layout.group(gate)[:, :1] * constant

    def linear(self, signal: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``signal @ weight.T`` (the LSTM's projection)."""
        return self.ctx.linear(F.linear, (signal, weight), {})


class TensorSteps(Steps):
    """[`Steps`][ctc_plugin.ctc.recurrent_steps.Steps] in plain tensor operations: what a pass runs.

    The same arithmetic as the rules, without their per-call work (grouping, checks, tags,
    gate marks, gates broadcast to every copy), which a layer of ``L`` steps pays ``L`` times
    on tensors of a few rows: signals stay grouped (N, C, [m,] size) from the first step to
    the last, a gate is the gate copy's (N, 1, [m,] size) values alone, and only the biases
    go through the pass's [`affine`][ctc_plugin.ctc.rules.GatedPass.affine] (the mode's
    sharing). Where the mode shares every unit's bias by that unit's copies alone
    ([`UNIT_SHARINGS`][ctc_plugin.ctc.recurrent_steps.UNIT_SHARINGS]), a bidirectional layer runs
    its two directions as one (`run_both_directions`): every tensor of a step then holds both,
    along a dim before the units (N, C, [m,] 2, size), and the step's operations run once for
    the two. ``tests/ctc/test_recurrent_steps.py`` holds it equal to the rules.

    Attributes:
        rows: How many leading dims of a grouped tensor hold its rows: 2 (N, C), or 3
            (N, C, m) where each copy has ``m`` sequences.
    """

    def __init__(self, ctx: GatedPass, rows: int) -> None:
        """``rows``: the number of sequences the layer runs (dim 0 of its batch-first input)."""
        super().__init__(ctx)
        self.rows = 2 if rows == ctx.layout.batch else 3
        self._zeros: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    @property
    def time_dim(self) -> int:
        """The dim of `project`'s result that runs over the steps: the one after the rows."""
        return self.rows

    @property
    def stacks_directions(self) -> bool:
        """Whether a layer's two directions may run as one (`UNIT_SHARINGS` modes)."""
        return self.ctx.sharing.name in UNIT_SHARINGS

    def _zero(self, like: torch.Tensor) -> torch.Tensor:
        """A 0-d zero of ``like``'s dtype and device, made once (a number is wrapped per call)."""
        key = (like.dtype, like.device)
        zero = self._zeros.get(key)
        if zero is None:
            zero = self._zeros[key] = like.new_zeros(())
        return zero

    def project(self, sequence: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``W x_t`` of every step, grouped (N, C, [m,] L, size): one product."""
        return self.ctx.layout.group(F.linear(sequence, weight))

    def project_both(
        self, sequence: torch.Tensor, forward: torch.Tensor, reverse: torch.Tensor
    ) -> torch.Tensor:
        """``W x_t`` of both directions, in the order each runs: (N, C, [m,] L, 2, size).

        Step ``t`` holds the forward direction's ``W x_t`` and the reverse one's
        ``W x_{L-1-t}``.
        """
        reversed_projection = F.linear(sequence, reverse).flip(1)
        return self.ctx.layout.group(
            torch.stack([F.linear(sequence, forward), reversed_projection], dim=2)
        )

    def enter(self, signal: torch.Tensor) -> torch.Tensor:
        """A flat (B, size) signal grouped (N, C, [m,] size) (a view)."""
        return self.ctx.layout.group(signal)

    def leave(self, signal: torch.Tensor) -> torch.Tensor:
        """A grouped signal as flat (B, size) propagated rows."""
        return self.ctx.tag(self._flat(signal))

    def outputs(self, signals: list[torch.Tensor]) -> torch.Tensor:
        """The grouped hidden states of every step as a (B, L, size) propagated tensor."""
        return self.ctx.tag(self._flat(torch.stack(signals, dim=self.rows)))

    def both_outputs(self, signals: list[torch.Tensor]) -> torch.Tensor:
        """Both directions' hidden states, each at its position: (B, L, 2 * size), propagated.

        ``signals`` are the steps' (N, C, [m,] 2, size) states in the order they ran.
        """
        stacked = torch.stack(signals, dim=self.rows)  # (N, C, [m,] L, 2, size)
        reverse = stacked.select(-2, 1).flip(self.rows)
        return self.ctx.tag(self._flat(torch.cat([stacked.select(-2, 0), reverse], dim=-1)))

    def _flat(self, grouped: torch.Tensor) -> torch.Tensor:
        """A grouped tensor with its rows flat (B, ...)."""
        return grouped.flatten(0, self.rows - 1)

    def affine(self, bias_free: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The pass's affine rule on the flat rows of a new grouped signal (none without bias)."""
        if bias is None:
            return bias_free
        return self.ctx.layout.group(self.ctx.affine(self._flat(bias_free), bias))

    def sigmoid_gates(self, z: torch.Tensor, origin: str) -> torch.Tensor:
        """``sigmoid`` of the gate copy's ``z``: its (N, 1, [m,] size) values, held fixed."""
        return torch.sigmoid(_gate_copy(z).detach())

    def rescale(
        self, x: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Every copy times ``y / x`` of the gate copy (0 where its ``x`` is 0).

        The gate copy gets its exact ``y``, as
        [`rescale_gate`][ctc_plugin.ctc.gate_rules.GateRules.rescale_gate] gives it. Only
        ``tanh`` comes here, whose ``f(0)`` is 0: there is no constant to share as a bias.
        """
        original = _gate_copy(x).detach()
        y = activation(original)
        zero = self._zero(original)
        out = x * torch.where(original != zero, y / original, zero)
        gate_copy = _gate_copy(out)
        gate_copy.copy_(exact_with_linear_gradient(y, gate_copy))
        return out

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        """Every copy where the gate copy's ``x`` is positive."""
        return x * (_gate_copy(x) > self._zero(x))

    def product(self, signal: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Every copy of ``signal`` times the gate copy's ``gate``."""
        return signal * gate

    def add(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """The sum of two signals."""
        return first + second

    def gated_bias(self, gate: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
        """The gate copy's ``gate`` times a per-example constant: a bias."""
        return gate * constant

    def linear(self, signal: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``signal @ weight.T`` (of each direction, with both)."""
        return per_direction_linear(signal, weight)


#: The bias sharings whose share of a unit's bias depends on that unit's copies alone, not on
#: the other units of the layer (``"reference"``'s statistics run over all of them): a layer's
#: two directions may share one call of the sharing.
UNIT_SHARINGS = frozenset({"proportional", "none"})


def per_direction_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T``; with a weight per direction (2, out, in), each direction's.

    ``x`` then holds the directions along dim -2 (..., 2, in); the result is (..., 2, out).
    """
    if weight.dim() == 2:
        return F.linear(x, weight)
    by_direction = x.flatten(0, -3).transpose(0, 1)  # (2, rows, in)
    return torch.bmm(by_direction, weight.mT).transpose(0, 1).unflatten(0, x.shape[:-2])


def _gate_copy(grouped: torch.Tensor) -> torch.Tensor:
    """The gate copy's (N, 1, [m,] size) part of a grouped tensor (a view)."""
    return grouped.narrow(1, 0, 1)


__all__ = ["UNIT_SHARINGS", "Steps", "TensorSteps", "per_direction_linear"]
