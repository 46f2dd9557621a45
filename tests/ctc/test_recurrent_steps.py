"""The recurrent rule's tensor steps equal its steps through the rules, in every mode.

A pass without ``tensor_steps`` (the spec's) runs every step of ``torch.lstm``, ``torch.gru``,
``torch.rnn_tanh`` and ``torch.rnn_relu`` through the ``GatedPass`` rules (`Steps`); a pass
runs `TensorSteps`, the same arithmetic in plain tensor operations on the grouped copies, with
a bidirectional layer's two directions as one where the mode shares each unit's bias by that
unit alone (``"proportional"``, ``"none"``). Here both run on the same random copies in float64
(every layer, 1 or 3 layers, 1 or 2 directions, either layout, with or without biases, the
LSTM's projection, zero, constant or computed initial states, one sequence or two per copy),
with the spec's sharing and pass and with the default (fused sharing, sparse pass), and give
the same output and final states; in the gradient path (``"none"``, one copy) the same gradient.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.recurrent import recurrent
from ctc_plugin.ctc.recurrent_steps import TensorSteps
from ctc_plugin.ctc.rules import GatedPass
from ctc_plugin.ctc.speedups import DEFAULT, SPEC, Speedups

from .test_recurrent_review import FUNCTIONS, _functions_and_options, _module

#: What the two may differ by: one direction at a time they agree to the bit; two directions as
#: one round on their own by a few ulps (the batched products, elementwise kernels on other
#: lengths).
TOLERANCE = {"rtol": 1e-12, "atol": 1e-13}


def _layout(mode: str) -> CopyLayout:
    """Two examples of three features and a baseline copy (and ``"reference"``'s full copy);
    the second example lacks its first feature."""
    reference = mode == "reference"
    presence = torch.ones(2, 4 + reference, dtype=torch.bool)
    presence[1, int(reference)] = False
    return CopyLayout(2, 3, reference_full=reference, baseline=True, presence=presence)


def _inputs(
    rnn: nn.RNNBase, layout: CopyLayout, initial: str, sequences: int, seed: int
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """A batch-first (B, 5, 6) sequence, B = ``sequences`` per copy, and ``(h_0[, c_0])``.

    The initial states are zeros, constants (one per example and sequence, the same for its
    copies) or signals (random, the copies along dim 1).
    """
    generator = torch.Generator().manual_seed(seed)
    rows = layout.batch * sequences
    sequence = torch.randn(rows, 5, 6, dtype=torch.float64, generator=generator)
    directions = rnn.num_layers * (2 if rnn.bidirectional else 1)
    sizes = (rnn.proj_size or rnn.hidden_size, rnn.hidden_size) if rnn.mode == "LSTM" else (4,)
    states = []
    for size in sizes:
        if initial == "constants":
            value = torch.randn(directions, layout.examples, 1, sequences, size,
                                dtype=torch.float64, generator=generator)  # fmt: skip
            value = value.expand(-1, -1, layout.copies, -1, -1).reshape(directions, rows, size)
        else:
            value = torch.randn(directions, rows, size, dtype=torch.float64, generator=generator)
            value = value if initial == "signals" else torch.zeros_like(value)
        states.append(value)
    return sequence, tuple(states)


def _run(ctx: GatedPass, rnn: nn.RNNBase, sequence, states, signals: bool, spec: bool) -> tuple:
    """`recurrent` of the module's function on ``sequence`` (batch first) and ``states``
    (propagated with ``signals``)."""
    x = ctx.tag(sequence.clone() if rnn.batch_first else sequence.transpose(0, 1).clone(),
                axis=0 if rnn.batch_first else 1)  # fmt: skip
    hx = tuple(ctx.tag(state.clone(), axis=1) if signals else state for state in states)
    function = FUNCTIONS[rnn.mode][0]
    options = (rnn._flat_weights, rnn.bias, rnn.num_layers, 0.0, False, rnn.bidirectional,
               rnn.batch_first)  # fmt: skip
    ctx.tensor_steps = not spec
    return recurrent(ctx, function, (x, hx if rnn.mode == "LSTM" else hx[0], *options), {})


def _fast_and_spec(
    speedups: Speedups, layout: CopyLayout, mode: str, rnn: nn.RNNBase, sequence, states,
    signals: bool = False,
) -> tuple[tuple, tuple]:  # fmt: skip
    """`_run` with the tensor steps and with the spec's rule calls, each in a fresh pass."""
    with torch.no_grad():
        return tuple(
            _run(
                speedups.gated_pass(layout, speedups.sharing(mode)),
                rnn,
                sequence,
                states,
                signals,
                spec,
            )  # fmt: skip
            for spec in (False, True)
        )


def _assert_tensor_steps_equal_the_rules(
    speedups: Speedups, mode: str, configuration: tuple, initial: str, sequences: int, seed: int
) -> None:
    layout = _layout(mode)
    torch.manual_seed(seed)
    rnn = _module(*configuration).double()
    sequence, states = _inputs(rnn, layout, initial, sequences, seed)
    got, expected = _fast_and_spec(
        speedups, layout, mode, rnn, sequence, states, initial == "signals"
    )
    for index, (value, reference) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(
            value, reference, **TOLERANCE,
            msg=lambda text, index=index: f"{configuration}, {initial}, {sequences} sequence(s) "
            f"per copy, result {index}: {text}",
        )  # fmt: skip


@pytest.mark.parametrize(
    "speedups",
    [
        pytest.param(SPEC, id="spec pass", marks=pytest.mark.slow),
        pytest.param(DEFAULT, id="default pass"),
    ],
)
@pytest.mark.parametrize(
    "mode", ["proportional", pytest.param("reference", marks=pytest.mark.slow), "none"]
)
def test_tensor_steps_equal_the_rules(speedups: Speedups, mode: str) -> None:
    """Output, ``h_n`` and ``c_n`` of every copy, for every configuration and initial state,
    with one or two sequences per copy."""
    cases = itertools.product(_functions_and_options(), ("zeros", "constants", "signals"))
    for seed, (configuration, initial) in enumerate(cases):
        sequences = 1 + seed % 2  # every other case two sequences per copy
        _assert_tensor_steps_equal_the_rules(
            speedups, mode, configuration, initial, sequences, seed
        )


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_a_gate_copy_pre_activation_of_zero_gives_a_rescale_gate_of_zero(mode: str) -> None:
    """An example whose sequence is all zeros, without biases: every ``tanh`` meets ``x = 0``,
    where the rescale gate ``tanh(x) / x`` is 0 (not ``0 / 0``); the other example's copies
    are random."""
    configuration = (mode, 2, True, True, False, 0)
    layout = _layout("proportional")
    torch.manual_seed(0)
    rnn = _module(*configuration).double()
    sequence, states = _inputs(rnn, layout, "zeros", 1, seed=0)
    sequence.view(layout.examples, layout.copies, 5, 6)[1] = 0
    for speedups in (SPEC, DEFAULT):
        got, expected = _fast_and_spec(speedups, layout, "proportional", rnn, sequence, states)
        assert all(bool(value.isfinite().all()) for value in got)
        for value, reference in zip(got, expected, strict=True):
            torch.testing.assert_close(value, reference, **TOLERANCE)


@pytest.mark.parametrize("configuration", _functions_and_options(), ids=str)
def test_the_gradient_path_has_the_rules_gradient(configuration: tuple) -> None:
    """``"none"`` as one copy per example with autograd (the gradient shortcut): the same
    output and the same gradient with respect to the input sequence and the initial states."""
    layout = CopyLayout(examples=2, features=0, reference_full=False, baseline=False)
    torch.manual_seed(0)
    rnn = _module(*configuration).double()
    sequence, states = _inputs(rnn, layout, "signals", 1, seed=1)
    results = []
    for spec in (False, True):
        leaves = [value.clone().requires_grad_(True) for value in (sequence, *states)]
        ctx = DEFAULT.gated_pass(layout, DEFAULT.sharing("none"), gradient=True)
        weights = torch.Generator().manual_seed(2)  # the same random weights of the results
        with torch.enable_grad():
            out = _run(ctx, rnn, leaves[0], leaves[1:], True, spec)
            total = sum(
                (value * torch.randn(value.shape, dtype=value.dtype, generator=weights)).sum()
                for value in out
            )
            gradients = torch.autograd.grad(total, leaves)
        results.append((tuple(value.detach() for value in out), gradients))
    (got, got_gradients), (expected, expected_gradients) = results
    for value, reference in zip(got + got_gradients, expected + expected_gradients, strict=True):
        torch.testing.assert_close(value, reference, **TOLERANCE)


def test_the_modes_that_run_both_directions_as_one() -> None:
    """``"reference"``'s statistics run over all units of a layer: its directions run apart."""
    layout = _layout("reference")
    for mode in ("proportional", "none", "reference"):
        steps = TensorSteps(DEFAULT.gated_pass(layout, DEFAULT.sharing(mode)), layout.batch)
        assert steps.stacks_directions == (mode != "reference")
