"""``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` decomposed into CTC's rules, one time step at a time.

The three layers share their frame: weights per layer and direction, each layer's directions
run over the previous layer's output, the copies along the batch dim (dim 0 with
``batch_first``, dim 1 otherwise), given or default initial states. Only the step differs
(`lstm_cell`, `gru_cell`, `rnn_cell`). At every step ``t`` of its sequence:

- an LSTM computes ``z = W x_t + U h + b`` (blocks i, f, g, o), ``i, f, o = sigmoid(.)``,
  ``g = tanh(z_g)``, ``c_t = f * c + i * g``, ``h_t = o * tanh(c_t)`` (times ``W_hr`` with
  ``proj_size``);
- a GRU computes ``r = sigmoid(W_ir x_t + b_ir + W_hr h + b_hr)``,
  ``z = sigmoid(W_iz x_t + b_iz + W_hz h + b_hz)``,
  ``n = tanh(W_in x_t + b_in + r * (W_hn h + b_hn))`` and ``h_t = (1 - z) * n + z * h``;
- an Elman RNN computes ``h_t = act(W_ih x_t + b_ih + W_hh h + b_hh)`` with ``act`` ``tanh``
  (``torch.rnn_tanh``) or ``relu`` (``torch.rnn_relu``).

CTC's principle (*whatever the full input decided nonlinearly is a gate taken from the gate copy;
everything else is linear in the copies, and input-independent terms are biases shared among
them*) reads them as LRP for LSTMs does (Arras et al. 2017, the "signal-take-all" rule):

- the pre-activations are affine: every copy computes ``W x_t + U h`` from its own ``x_t`` and
  ``h``, and the biases (with ``U h_0`` for a constant initial state) are shared among the copies
  ([`GatedPass.affine`][ctc_plugin.ctc.rules.GatedPass.affine]);
- the sigmoid gates (the LSTM's ``i``, ``f``, ``o``, the GRU's ``r`` and ``z``) are gates: every
  copy of what they multiply is multiplied by the gate copy's gate value
  ([`GatedPass.gate_product`][ctc_plugin.ctc.gate_rules.GateRules.gate_product]); they carry no
  contribution of their own. The GRU's reset gate ``r`` multiplies the hidden part
  ``W_hn h + b_hn`` of the candidate's pre-activation: every copy's ``W_hn h`` times the gate
  copy's ``r``, and ``r * b_hn`` (with ``r * W_hn h_0`` of a constant ``h_0``), a bias times a
  gate, a bias shared with ``b_in``;
- ``tanh`` (the LSTM's ``g`` and ``tanh(c_t)``, the GRU's ``n``, ``torch.rnn_tanh``) is a
  rescale gate: every copy times ``y / x`` of the gate copy
  ([`GatedPass.rescale_gate`][ctc_plugin.ctc.gate_rules.GateRules.rescale_gate]); ``relu``
  (``torch.rnn_relu``) is the ReLU gate
  ([`GatedPass.relu_gate`][ctc_plugin.ctc.gate_rules.GateRules.relu_gate]);
- a gate times a constant initial state (the LSTM's ``f * c_0``, the GRU's ``z * h_0``) is
  input-independent: a bias shared among the copies. Initial states given by the caller as
  constants (or the zeros the modules make without them) are constants; initial states computed
  from the input are signals.

So every copy's states are linear in the copies, the gate copy computes the model's layer, over
a partition the ``"proportional"`` copies add up to the gate copy's at every step, and ``"none"``
is gradient x input of the layer with its sigmoid gates, its ``tanh(x) / x`` ratios and its ReLU
patterns held fixed.

The steps apply the rules directly instead of running plain torch calls under
[`CTCMode`][ctc_plugin.ctc.attribution.CTCMode] (as
[`multi_head_attention`][ctc_plugin.ctc.attention.multi_head_attention] does): there ``tanh``
would make a gate tensor, and ``i * g`` of two gate tensors the full pass's value alone. The
cells are written once against the operations of [`Steps`][ctc_plugin.ctc.recurrent_steps.Steps],
which calls one rule of the pass per operation (the specification: ``SPEC`` of
[`speedups`][ctc_plugin.ctc.speedups]). A pass runs
[`TensorSteps`][ctc_plugin.ctc.recurrent_steps.TensorSteps] (``Speedups.tensor_steps``): the same
values in plain tensor operations on the grouped copies, without the rules' per-call grouping,
checks and tags, which a layer pays at every step of its sequence; only the biases go through
the pass's [`affine`][ctc_plugin.ctc.rules.GatedPass.affine] rule (the mode's sharing). In
``"proportional"`` and ``"none"``, which share a unit's bias by that unit's copies alone, a
bidirectional layer runs its two directions as one (step ``t`` of one beside step ``L - 1 - t``
of the other), halving the steps; in ``"reference"``, whose statistics run over all units of a
layer, they run one after the other. ``W x_t`` of every step is one product before the first.

Supported: any ``num_layers``, ``bidirectional``, ``batch_first`` either way, with or without
biases, the LSTM's ``proj_size``, given or default initial states, dropout between layers in
eval mode (the identity). Refused: packed sequences (``PackedSequence``, however the call passes
its arguments), dropout between layers in training mode (random), an input sequence that does not
depend on the input or whose copies lie along another dim than its batch dim (an unbatched
sequence), weights computed from the input, and gate-only inputs; and by name what torch refuses
too (an empty sequence, initial states of another number or shape than the input needs: a state
made for a batch of one, which torch's LSTM reads past).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from ctc_plugin.ctc.calls import arg, operation_name
from ctc_plugin.ctc.errors import UnsupportedOperationError
from ctc_plugin.ctc.recurrent_steps import Steps, TensorSteps, per_direction_linear
from ctc_plugin.ctc.rules import GatedPass

#: The names of the arguments of ``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh`` and
#: ``torch.rnn_relu`` (their padded-batch signature), in order.
RECURRENT_ARGUMENTS = (
    "input", "hx", "params", "has_biases", "num_layers", "dropout", "train", "bidirectional",
    "batch_first",
)  # fmt: skip


@dataclass(frozen=True)
class RecurrentWeights:
    """The parameters of one layer and direction of a recurrent layer.

    The blocks of the weights and biases follow torch's order: i, f, g, o for an LSTM; r, z, n
    for a GRU; one block for an RNN.

    Attributes:
        input_weight: ``W_ih`` (blocks * hidden, input size).
        hidden_weight: ``W_hh`` (blocks * hidden, hidden or projection size).
        input_bias: ``b_ih`` (blocks * hidden), or ``None`` without biases.
        hidden_bias: ``b_hh`` (blocks * hidden), or ``None`` without biases.
        projection: The LSTM's ``W_hr`` (projection size, hidden) with ``proj_size``, else
            ``None``.
    """

    input_weight: torch.Tensor
    hidden_weight: torch.Tensor
    input_bias: torch.Tensor | None
    hidden_bias: torch.Tensor | None
    projection: torch.Tensor | None

    @functools.cached_property
    def biases(self) -> torch.Tensor | None:
        """``b_ih + b_hh`` (``None`` without biases), summed once for every step."""
        return _plus(self.input_bias, self.hidden_bias)


@dataclass(frozen=True)
class State:
    """A hidden or cell state: the copies' part and the part every copy of an example shares.

    Its value is ``signal + constant`` in the gate copy. Initial states are one or the other;
    after the first step every state is a signal.

    Attributes:
        signal: The copies' rows, or ``None``: flat (B, size) propagated rows, one per copy (or
            ``m`` per copy), as [`Steps`][ctc_plugin.ctc.recurrent_steps.Steps] takes them between
            the steps, grouped (N, C, [m,] size) inside them with
            [`TensorSteps`][ctc_plugin.ctc.recurrent_steps.TensorSteps].
        constant: Per-example (N, 1, [m,] size) constant, grouped as
            [`CopyLayout.group`][ctc_plugin.ctc.layout.CopyLayout.group] groups the rows, or
            ``None`` where it is zero.
    """

    signal: torch.Tensor | None = None
    constant: torch.Tensor | None = None


#: One step of a recurrent layer: ``(steps, W x_t, weights, states)`` to the next states, the
#: hidden state first (the step's output).
Cell = Callable[[Steps, torch.Tensor, RecurrentWeights, tuple[State, ...]], tuple[State, ...]]


def lstm_cell(
    steps: Steps, projected: torch.Tensor, weights: RecurrentWeights, states: tuple[State, ...]
) -> tuple[State, State]:
    """One LSTM step: ``(h_t, c_t)`` from ``W x_t`` (``projected``) and the states ``(h, c)``.

    The pre-activations are affine (bias shared), ``i``, ``f``, ``o`` gates of the gate copy,
    ``g`` and ``tanh(c_t)`` rescale gates, ``f * c`` of a constant ``c`` a bias (see the module).
    """
    h, c = states
    z = steps.affine(_recurrent_sum(projected, h, weights), _bias(weights.biases, h, weights))
    gates = steps.sigmoid_gates(z, "an LSTM's gates")  # g's block unused
    input_gate, forget_gate, _, output_gate = gates.chunk(4, dim=-1)
    candidate = steps.rescale(z.chunk(4, dim=-1)[2], torch.tanh)
    cell = steps.product(candidate, input_gate)
    if c.signal is not None:
        cell = steps.add(cell, steps.product(c.signal, forget_gate))
    cell = steps.affine(cell, _gated_constant(steps, forget_gate, c))
    out = steps.product(steps.rescale(cell, torch.tanh), output_gate)
    if weights.projection is not None:
        out = steps.linear(out, weights.projection)
    return State(signal=out), State(signal=cell)


def gru_cell(
    steps: Steps, projected: torch.Tensor, weights: RecurrentWeights, states: tuple[State, ...]
) -> tuple[State]:
    """One GRU step: ``h_t`` from ``W x_t`` (``projected``) and the state ``(h,)``.

    ``r`` and ``z`` gates of the gate copy (their pre-activations affine), ``n``'s
    pre-activation affine with ``r`` of the gate copy on its hidden part (``r * b_hn`` a
    shared bias), ``tanh`` a rescale gate, ``(1 - z) * n + z * h`` gate products and ``z * h_0``
    of a constant ``h_0`` a bias (see the module).
    """
    (h,) = states
    recurrent = None if h.signal is None else per_direction_linear(h.signal, weights.hidden_weight)
    hidden_bias = _bias(weights.hidden_bias, h, weights)  # b_hh + U h_0: r, z and n blocks
    gates = steps.sigmoid_gates(
        steps.affine(
            _fresh_sum(_block(projected, 0, 2), _block(recurrent, 0, 2)),
            _gate_bias(weights, h, hidden_bias),
        ),
        "a GRU's gates",
    )
    reset, update = gates.chunk(2, dim=-1)
    reset_hidden = None if recurrent is None else steps.product(_block(recurrent, 2, 3), reset)
    reset_bias = _block(hidden_bias, 2, 3)  # b_hn + W_hn h_0, times the gate copy's r
    if reset_bias is not None:
        reset_bias = steps.gated_bias(reset, reset_bias)
    candidate = steps.rescale(
        steps.affine(
            _fresh_sum(_block(projected, 2, 3), reset_hidden),
            _plus(_block(weights.input_bias, 2, 3), reset_bias),
        ),
        torch.tanh,
    )
    out = steps.product(candidate, 1 - update)
    if h.signal is not None:
        out = steps.add(out, steps.product(h.signal, update))
    return (State(signal=steps.affine(out, _gated_constant(steps, update, h))),)


def _gate_bias(
    weights: RecurrentWeights, h: State, hidden_bias: torch.Tensor | None
) -> torch.Tensor | None:
    """A GRU's bias of its r and z blocks: ``b_ih + b_hh`` (summed once) plus ``U h_0``."""
    if h.constant is None:
        return _block(weights.biases, 0, 2)
    return _plus(_block(weights.input_bias, 0, 2), _block(hidden_bias, 0, 2))


def rnn_cell(
    steps: Steps,
    projected: torch.Tensor,
    weights: RecurrentWeights,
    states: tuple[State, ...],
    activation: Callable[[Steps, torch.Tensor], torch.Tensor],
) -> tuple[State]:
    """One Elman RNN step: ``h_t = activation(W x_t + U h + b)``, the pre-activation affine."""
    (h,) = states
    z = steps.affine(_recurrent_sum(projected, h, weights), _bias(weights.biases, h, weights))
    return (State(signal=activation(steps, z)),)


def _tanh(steps: Steps, z: torch.Tensor) -> torch.Tensor:
    """``tanh``: the rescale gate ``tanh(z) / z`` of the gate copy."""
    return steps.rescale(z, torch.tanh)


def _relu(steps: Steps, z: torch.Tensor) -> torch.Tensor:
    """``relu``: the gate copy's ReLU pattern."""
    return steps.relu(z)


@dataclass(frozen=True)
class RecurrentLayer:
    """What sets one kind of recurrent layer apart: its module's name, its step and its states.

    Attributes:
        module: The module that calls it (``"nn.LSTM"``), for the messages.
        cell: One step (`Cell`).
        states: The names of its initial states, in the order of ``hx`` (``h_0``, an LSTM's
            ``c_0``).
    """

    module: str
    cell: Cell
    states: tuple[str, ...] = ("h_0",)


#: The recurrent layers by the torch function their modules call.
LAYERS: dict[Any, RecurrentLayer] = {
    torch.lstm: RecurrentLayer("nn.LSTM", lstm_cell, ("h_0", "c_0")),
    torch.gru: RecurrentLayer("nn.GRU", gru_cell),
    torch.rnn_tanh: RecurrentLayer("nn.RNN", functools.partial(rnn_cell, activation=_tanh)),
    torch.rnn_relu: RecurrentLayer("nn.RNN", functools.partial(rnn_cell, activation=_relu)),
}


def recurrent(
    ctx: GatedPass, func: Callable, args: tuple, kwargs: dict
) -> tuple[torch.Tensor, ...]:
    """``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh`` or ``torch.rnn_relu``, decomposed.

    Returns what ``func`` returns: ``output`` in the layout of the input (the copies along dim 0
    with ``batch_first``, dim 1 otherwise), then ``h_n`` (and the LSTM's ``c_n``), (layers *
    directions, batch, size) with the copies along dim 1. See the module for the rules.
    The steps run as the pass says (``ctx.tensor_steps``): as plain tensor operations
    ([`TensorSteps`][ctc_plugin.ctc.recurrent_steps.TensorSteps]), or through the rules
    ([`Steps`][ctc_plugin.ctc.recurrent_steps.Steps], the spec's).

    Raises:
        UnsupportedOperationError: A packed sequence, dropout between layers in training mode,
            an input the rule cannot follow (see the module), an empty sequence or initial
            states that do not fit the input (torch refuses them too, and reads past an LSTM's
            state made for a batch of one).
    """
    layer, name = LAYERS[func], operation_name(func)
    if _packed(args, kwargs):
        raise UnsupportedOperationError(
            name,
            "its input is a packed sequence (PackedSequence): its rows mix the examples and "
            f"their feature copies by length; give {layer.module} the padded batch instead",
        )
    call = {n: arg(args, kwargs, i, n) for i, n in enumerate(RECURRENT_ARGUMENTS)}
    layers, directions = int(call["num_layers"]), 2 if call["bidirectional"] else 1
    _check_call(ctx, name, call, layers)
    batch_first = bool(call["batch_first"])
    sequence = _batch_first_signal(ctx, call["input"], batch_first, name)
    weights = _weights(call["params"], bool(call["has_biases"]), layers * directions)
    hx = call["hx"] if isinstance(call["hx"], (tuple, list)) else (call["hx"],)
    _check_states(layer, name, hx, (layers * directions, sequence.shape[0]), weights[0])
    initial = list(zip(*(_initial_states(ctx, t, sequence, name) for t in hx), strict=True))
    steps = TensorSteps(ctx, sequence.shape[0]) if ctx.tensor_steps else Steps(ctx)
    finals: list[tuple[State, ...]] = []
    for number in range(layers):
        group = slice(number * directions, (number + 1) * directions)
        sequence, states = run_layer(steps, sequence, weights[group], initial[group], layer.cell)
        finals.extend(states)
    return _returned(ctx, sequence, finals, batch_first)


def _packed(args: tuple, kwargs: dict) -> bool:
    """Whether the call is the packed-sequence form ``(data, batch_sizes, hx, params, ...)``.

    The padded form is ``(input, hx, params, has_biases, ...)``: its second argument is an
    LSTM's ``(h_0, c_0)`` or a floating-point ``h_0``, where the packed form's is
    ``batch_sizes``, an int64 tensor. Torch takes the arguments after it by position or by
    keyword (``torch.gru(data, batch_sizes, hx, params=..., ...)``), so they tell nothing.
    """
    if "batch_sizes" in kwargs or "data" in kwargs:
        return True
    second = args[1] if len(args) > 1 else None
    return isinstance(second, torch.Tensor) and second.dtype == torch.int64


def _check_call(ctx: GatedPass, name: str, call: dict, layers: int) -> None:
    """Refuse dropout between layers in training mode and weights computed from the input."""
    if call["train"] and call["dropout"] and layers > 1:
        raise UnsupportedOperationError(
            name,
            "the dropout between its layers is random in training mode; call model.eval() first",
        )
    if any(ctx.is_propagated(p) for p in call["params"]):
        raise UnsupportedOperationError(name, "its weights depend on the input")


def _batch_first_signal(ctx: GatedPass, value: Any, batch_first: bool, name: str) -> torch.Tensor:
    """The propagated input sequence as (B, L, features), the copies along dim 0.

    Raises:
        UnsupportedOperationError: The input is not propagated (its initial states are), is a
            gate-only tensor, or holds the copies along another dim than the batch dim.
    """
    if not ctx.is_propagated(value):
        raise UnsupportedOperationError(
            name,
            "its input sequence does not depend on the input while its initial state does; CTC "
            "follows the copies through a recurrent layer from its input sequence",
        )
    _refuse_gate_only(ctx, value, name)
    batch_dim = 0 if batch_first else 1
    if ctx.copy_axis(value) != batch_dim:
        raise UnsupportedOperationError(
            name,
            f"its input of shape {tuple(value.shape)} holds the copies along dim "
            f"{ctx.copy_axis(value)}, not along its batch dim {batch_dim} "
            f"(batch_first={batch_first}), so the layer would run along the copies; give it a "
            "batched sequence (an unbatched 2-d sequence is refused)",
        )
    if value.shape[1 - batch_dim] == 0:
        raise UnsupportedOperationError(
            name, "its input sequence is empty (length 0), which torch refuses as well"
        )
    return value if batch_first else value.transpose(0, 1)


def _check_states(
    layer: RecurrentLayer,
    name: str,
    hx: Sequence[Any],
    leading: tuple[int, int],
    weights: RecurrentWeights,
) -> None:
    """Refuse initial states that do not fit the input, as torch does (or should).

    ``hx`` holds one state per name of ``layer.states``, each of shape (layers * directions,
    the input's batch, its size): ``h_0``'s is ``W_hh``'s input size (an LSTM's
    ``proj_size``), ``c_0``'s the LSTM's hidden size. ``leading`` is the first two.

    Raises:
        UnsupportedOperationError: Another number of states, or a state of another shape
            (another batch, another number of layers, another size).
    """
    if len(hx) != len(layer.states):
        raise UnsupportedOperationError(
            name,
            f"it takes {len(layer.states)} initial states ({', '.join(layer.states)}), not "
            f"{len(hx)}",
        )
    sizes = (weights.hidden_weight.shape[1], weights.hidden_weight.shape[0] // 4)
    for state, value, size in zip(layer.states, hx, sizes):
        expected = (*leading, size)
        if tuple(value.shape) != expected:
            raise UnsupportedOperationError(
                name,
                f"its initial state {state} of shape {tuple(value.shape)} does not fit its "
                f"input: it needs shape {expected} (layers x directions, the input's "
                f"{leading[1]} sequences, the state's size); a CTC pass runs every example's "
                "copies as one batch, so make the state from the input's batch size "
                "(x.shape[0], or x.shape[1] with batch_first=False)",
            )


def _refuse_gate_only(ctx: GatedPass, value: torch.Tensor, name: str) -> None:
    """Refuse a gate-only operand (a softmax output, attention scores): no signal to follow."""
    mark = ctx.gate_mark(value)
    if mark is not None and mark.only:
        raise UnsupportedOperationError(
            name,
            f"it reads the output of {mark.origin}, a gate tensor of the full pass that may "
            "only multiply or divide the signal, as its input or initial state",
        )


def _weights(params: Sequence[torch.Tensor], biases: bool, groups: int) -> list[RecurrentWeights]:
    """The `RecurrentWeights` of every layer and direction, in torch's order.

    Each group holds ``W_ih, W_hh``, then ``b_ih, b_hh`` with biases, then the LSTM's ``W_hr``
    with ``proj_size``.
    """
    size = len(params) // groups
    projected = size == (5 if biases else 3)
    found = []
    for group in range(groups):
        part = list(params[group * size : (group + 1) * size])
        input_bias, hidden_bias = (part[2], part[3]) if biases else (None, None)
        projection = part[-1] if projected else None
        found.append(RecurrentWeights(part[0], part[1], input_bias, hidden_bias, projection))
    return found


def _initial_states(
    ctx: GatedPass, value: torch.Tensor, sequence: torch.Tensor, name: str
) -> list[State]:
    """An initial state (layers * directions, B, size) as one `State` per layer and direction.

    Computed from the input (propagated, the copies along dim 1): a signal. Otherwise a
    constant, the same for every copy of an example (checked), kept per example; zeros (what
    the modules pass without ``hx``) are no constant at all. The modules' own zeros are known
    as such without reading them (`GatedPass.known_zeros`): on a GPU a read waits for the device.
    """
    if ctx.is_propagated(value):
        _refuse_gate_only(ctx, value, name)
        if ctx.copy_axis(value) != 1:
            raise UnsupportedOperationError(
                name,
                f"its initial state of shape {tuple(value.shape)} holds the copies along dim "
                f"{ctx.copy_axis(value)}, not along its batch dim 1",
            )
        return [State(signal=row) for row in value.unbind(0)]
    if ctx.known_zeros(value) or not bool(value.any()):
        return [State() for _ in range(value.shape[0])]
    rows = value.transpose(0, 1)  # (B, layers * directions, size), aligned with the sequence
    ctx.check_constant(rows, sequence, name)
    grouped = ctx.layout.group(rows)[:, :1]  # (N, 1, [m,] layers * directions, size)
    return [State(constant=grouped.select(-2, index)) for index in range(value.shape[0])]


def run_layer(
    steps: Steps,
    sequence: torch.Tensor,
    weights: Sequence[RecurrentWeights],
    states: Sequence[tuple[State, ...]],
    cell: Cell,
) -> tuple[torch.Tensor, list[tuple[State, ...]]]:
    """One layer over a (B, L, features) propagated sequence, in one or two directions.

    Returns its output (B, L, directions * size) and the last states of each direction.
    Two directions run as one where the steps can (`TensorSteps.stacks_directions`), else
    one after the other.
    """
    if len(weights) == 2 and isinstance(steps, TensorSteps) and steps.stacks_directions:
        return run_both_directions(steps, sequence, weights, states, cell)
    runs = [
        run_direction(steps, sequence, direction, initial, cell, reverse=index == 1)
        for index, (direction, initial) in enumerate(zip(weights, states, strict=True))
    ]
    outputs = [output for output, _ in runs]
    output = outputs[0] if len(runs) == 1 else steps.ctx.tag(torch.cat(outputs, dim=-1))
    return output, [last for _, last in runs]


def run_direction(
    steps: Steps,
    sequence: torch.Tensor,
    weights: RecurrentWeights,
    states: tuple[State, ...],
    cell: Cell,
    reverse: bool,
) -> tuple[torch.Tensor, tuple[State, ...]]:
    """One layer in one direction over a (B, L, features) propagated sequence.

    Returns its outputs (B, L, size), each step's hidden state at its position, and the last
    states (those after the first position with ``reverse``), their signals flat (B, size).
    ``W x_t`` of every step is one product before the first step.
    """
    projected = steps.project(sequence, weights.input_weight)
    outputs, states = _run_steps(steps, projected, weights, states, cell, reverse)
    return steps.outputs(outputs), tuple(State(signal=steps.leave(s.signal)) for s in states)


def run_both_directions(
    steps: TensorSteps,
    sequence: torch.Tensor,
    weights: Sequence[RecurrentWeights],
    states: Sequence[tuple[State, ...]],
    cell: Cell,
) -> tuple[torch.Tensor, list[tuple[State, ...]]]:
    """Both directions of a layer as one, each with its own weights.

    Step ``t`` runs the forward direction's step ``t`` beside the reverse one's ``L - 1 - t``.
    As `run_layer` returns them. The directions are independent; the step's operations, the
    bias sharing of a [`UNIT_SHARINGS`][ctc_plugin.ctc.recurrent_steps.UNIT_SHARINGS] mode too,
    act on each unit of each direction as they would on it alone.
    """
    forward, reverse = weights
    projected = steps.project_both(sequence, forward.input_weight, reverse.input_weight)
    initial = tuple(_stacked_state(*pair) for pair in zip(*states, strict=True))
    outputs, last = _run_steps(
        steps, projected, _stacked_weights(forward, reverse), initial, cell, reverse=False
    )
    finals = [
        tuple(State(signal=steps.leave(state.signal.select(-2, index))) for state in last)
        for index in range(2)
    ]
    return steps.both_outputs(outputs), finals


def _run_steps(
    steps: Steps,
    projected: torch.Tensor,
    weights: RecurrentWeights,
    states: tuple[State, ...],
    cell: Cell,
    reverse: bool,
) -> tuple[list[torch.Tensor], tuple[State, ...]]:
    """Every step's hidden state, at its position, and the states after the last step.

    ``projected`` is `Steps.project`'s: ``W x_t`` along ``steps.time_dim``.
    """
    states = tuple(_entered(steps, state) for state in states)
    length = projected.shape[steps.time_dim]
    outputs = []
    for t in reversed(range(length)) if reverse else range(length):
        states = cell(steps, projected.select(steps.time_dim, t), weights, states)
        outputs.append(states[0].signal)
    return outputs[::-1] if reverse else outputs, states


def _stacked_weights(forward: RecurrentWeights, reverse: RecurrentWeights) -> RecurrentWeights:
    """The two directions' weights, each stacked (2, ...) (``None`` stays)."""

    def stacked(name: str) -> torch.Tensor | None:
        first = getattr(forward, name)
        return None if first is None else torch.stack([first, getattr(reverse, name)])

    return RecurrentWeights(*(stacked(field.name) for field in fields(RecurrentWeights)))


def _stacked_state(forward: State, reverse: State) -> State:
    """The two directions' initial states as one.

    Flat signals become (B, 2, size), constants (N, 1, [m,] 2, size). A state tensor is a
    signal, a constant or zeros for all its directions at once.
    """
    if forward.signal is not None:
        return State(signal=torch.stack([forward.signal, reverse.signal], dim=1))
    if forward.constant is not None:
        return State(constant=torch.stack([forward.constant, reverse.constant], dim=-2))
    return State()


def _entered(steps: Steps, state: State) -> State:
    """An initial state as the steps take it (its signal, if any, through ``steps.enter``)."""
    return state if state.signal is None else State(signal=steps.enter(state.signal))


def _recurrent_sum(projected: torch.Tensor, h: State, weights: RecurrentWeights) -> torch.Tensor:
    """``W x_t + U h`` of every copy: the bias-free pre-activations, a new tensor."""
    hidden = None if h.signal is None else per_direction_linear(h.signal, weights.hidden_weight)
    return _fresh_sum(projected, hidden)


def _fresh_sum(first: torch.Tensor, second: torch.Tensor | None) -> torch.Tensor:
    """``first + second`` (``first`` without ``second``) as a new tensor.

    The affine rule may write into its argument; ``first`` is a view of the projected sequence.
    """
    return first.clone() if second is None else first + second


def _plus(first: torch.Tensor | None, second: torch.Tensor | None) -> torch.Tensor | None:
    """The sum of two biases, either of which may be missing (``None``)."""
    if first is None or second is None:
        return second if first is None else first
    return first + second


def _block(value: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    """Blocks ``start:stop`` of the three of a GRU's last dim (r, z, n); ``None`` stays."""
    if value is None:
        return None
    size = value.shape[-1] // 3
    return value[..., start * size : stop * size]


def _bias(bias: torch.Tensor | None, h: State, weights: RecurrentWeights) -> torch.Tensor | None:
    """``bias + U h_0`` (``U h_0`` of a constant ``h_0``, per example), or ``None``.

    The parts that are missing are left out: no bias at all gives ``None``.
    """
    shared = None if h.constant is None else per_direction_linear(h.constant, weights.hidden_weight)
    return _plus(bias, shared)


def _gated_constant(steps: Steps, gate: torch.Tensor, state: State) -> torch.Tensor | None:
    """The gate copy's ``gate`` times a constant state, per example: a bias; or ``None``."""
    if state.constant is None:
        return None
    return steps.gated_bias(gate, state.constant)


def _returned(
    ctx: GatedPass, sequence: torch.Tensor, finals: list[tuple[State, ...]], batch_first: bool
) -> tuple[torch.Tensor, ...]:
    """``(output, h_n[, c_n])`` in torch's layout, tagged with where the copies lie."""
    last = tuple(
        ctx.tag(torch.stack([states[i].signal for states in finals]), axis=1)
        for i in range(len(finals[0]))
    )
    if batch_first:
        return ctx.tag(sequence), *last
    return ctx.tag(sequence.transpose(0, 1).contiguous(), axis=1), *last
