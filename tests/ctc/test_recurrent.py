"""CTC through ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN``: gates of the full pass, step by step.

The model: a convolution and a ReLU, the image's columns as a sequence, a recurrent layer (one
or two layers, one or two directions, batch first or sequence first, the LSTM's projection,
with given or computed initial states), and a linear head on the mean output and the last
states (``h_n``, and the LSTM's ``c_n``). In float64 with random weights: ``"proportional"``
scores add up to the target logit and equal the spec's; ``"none"`` is gradient x input of the
layer written out by hand from torch's formulas with its sigmoid gates detached and ``tanh(x)``
as ``x * (tanh(x) / x).detach()`` (``relu`` as it is: its gradient is its pattern); the Zennit
attributor equals the Captum class. What the rule cannot follow is refused by name.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ctc_plugin import CTC
from ctc_plugin.inputs import TrainingModeError

from .exactness import (
    assert_equals_the_spec,
    assert_none_is_gradient_x_input,
    assert_proportional_adds_up,
    assert_refused,
    assert_zennit_equals_captum,
    held_fixed,
    random_case,
)

HIDDEN = 5
CONFIGURATIONS = {
    "LSTM one layer": {},
    "LSTM two layers, bidirectional": {"layers": 2, "bidirectional": True},
    "LSTM sequence first, bidirectional": {"bidirectional": True, "batch_first": False},
    "LSTM two layers, sequence first": {"layers": 2, "batch_first": False},
    "LSTM projection": {"layers": 2, "bidirectional": True, "proj_size": 3},
    "LSTM no biases": {"bias": False, "initial": "given"},
    "LSTM given initial states": {"layers": 2, "bidirectional": True, "initial": "given"},
    "LSTM computed initial states": {
        "bidirectional": True, "batch_first": False, "initial": "computed"
    },
    "GRU one layer": {"mode": "GRU"},
    "GRU two layers, bidirectional": {"mode": "GRU", "layers": 2, "bidirectional": True},
    "GRU sequence first, bidirectional": {
        "mode": "GRU", "bidirectional": True, "batch_first": False
    },
    "GRU no biases": {"mode": "GRU", "layers": 2, "bias": False},
    "GRU no biases, given initial state": {"mode": "GRU", "bias": False, "initial": "given"},
    "GRU given initial states": {
        "mode": "GRU", "layers": 2, "bidirectional": True, "initial": "given"
    },
    "GRU computed initial state": {"mode": "GRU", "batch_first": False, "initial": "computed"},
    "RNN tanh two layers, bidirectional": {
        "mode": "RNN_TANH", "layers": 2, "bidirectional": True
    },
    "RNN tanh given initial states, sequence first": {
        "mode": "RNN_TANH", "layers": 2, "batch_first": False, "initial": "given"
    },
    "RNN tanh no biases, computed initial state": {
        "mode": "RNN_TANH", "bias": False, "initial": "computed"
    },
    "RNN relu one layer": {"mode": "RNN_RELU"},
    "RNN relu given initial states, bidirectional": {
        "mode": "RNN_RELU", "layers": 2, "bidirectional": True, "initial": "given"
    },
    "RNN relu computed initial state, sequence first": {
        "mode": "RNN_RELU", "bidirectional": True, "batch_first": False, "initial": "computed"
    },
}  # fmt: skip

Activation = Callable[[torch.Tensor], torch.Tensor]
States = tuple[torch.Tensor, ...]


def _lstm_step(inputs, hiddens, states: States, sigmoid: Activation, tanh: Activation) -> States:
    """``(h, c)``: ``c = σ(f) c + σ(i) tanh(g)``, ``h = σ(o) tanh(c)``."""
    i, f, g, o = (inputs + hiddens).chunk(4, dim=-1)
    c = sigmoid(f) * states[1] + sigmoid(i) * tanh(g)
    return sigmoid(o) * tanh(c), c


def _gru_step(inputs, hiddens, states: States, sigmoid: Activation, tanh: Activation) -> States:
    """``(h,)``: ``n = tanh(i_n + r (W_hn h + b_hn))``, ``h = (1 - z) n + z h`` (torch's docs)."""
    (i_r, i_z, i_n), (h_r, h_z, h_n) = inputs.chunk(3, dim=-1), hiddens.chunk(3, dim=-1)
    r, z = sigmoid(i_r + h_r), sigmoid(i_z + h_z)
    n = tanh(i_n + r * h_n)
    return ((1 - z) * n + z * states[0],)


def _rnn_tanh_step(inputs, hiddens, states: States, sigmoid: Activation, tanh: Activation):
    """``(h,)``: ``h = tanh(W_ih x + b_ih + W_hh h + b_hh)``."""
    return (tanh(inputs + hiddens),)


def _rnn_relu_step(inputs, hiddens, states: States, sigmoid: Activation, tanh: Activation):
    """``(h,)``: ``h = relu(W_ih x + b_ih + W_hh h + b_hh)``; its gradient is its pattern."""
    return (torch.relu(inputs + hiddens),)


STEPS = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN_TANH": _rnn_tanh_step}
STEPS["RNN_RELU"] = _rnn_relu_step


def _written_out(
    layer: nn.RNNBase, sequence: torch.Tensor, hx: States, frozen: bool
) -> tuple[torch.Tensor, States]:
    """``layer`` of a batch-first ``sequence`` in plain torch; ``frozen``: gates held fixed.

    Held fixed: the sigmoid gates detached, ``tanh(x)`` as ``x * (tanh(x) / x).detach()``.
    Returns the output and the last states, as the module does.
    """
    sigmoid = (lambda z: torch.sigmoid(z).detach()) if frozen else torch.sigmoid
    tanh = (lambda z: z * (torch.tanh(z) / z).detach()) if frozen else torch.tanh
    step, directions = STEPS[layer.mode], 2 if layer.bidirectional else 1
    finals = []
    for number in range(layer.num_layers):
        outputs = []
        for direction in range(directions):
            suffix = f"_l{number}" + ("_reverse" if direction else "")
            w_ih, w_hh = getattr(layer, "weight_ih" + suffix), getattr(layer, "weight_hh" + suffix)
            b_ih, b_hh = 0.0, 0.0
            if layer.bias:
                b_ih, b_hh = getattr(layer, "bias_ih" + suffix), getattr(layer, "bias_hh" + suffix)
            states = tuple(state[number * directions + direction] for state in hx)
            steps = range(sequence.shape[1])
            out = [None] * sequence.shape[1]
            for t in reversed(steps) if direction else steps:
                inputs = sequence[:, t] @ w_ih.T + b_ih
                states = step(inputs, states[0] @ w_hh.T + b_hh, states, sigmoid, tanh)
                if getattr(layer, "proj_size", 0):
                    states = (states[0] @ getattr(layer, "weight_hr" + suffix).T, *states[1:])
                out[t] = states[0]
            outputs.append(torch.stack(out, 1))
            finals.append(states)
        sequence = torch.cat(outputs, -1)
    return sequence, tuple(torch.stack(state) for state in zip(*finals))


def _layer(mode: str, size: int = 32, **options) -> nn.RNNBase:
    """``nn.LSTM``, ``nn.GRU`` or ``nn.RNN`` (``RNN_TANH``, ``RNN_RELU``) of ``HIDDEN`` units."""
    if mode == "LSTM":
        return nn.LSTM(size, HIDDEN, **options)
    if mode == "GRU":
        return nn.GRU(size, HIDDEN, **options)
    return nn.RNN(size, HIDDEN, nonlinearity=mode.removeprefix("RNN_").lower(), **options)


class ColumnsThroughRecurrent(nn.Module):
    """Conv, ReLU, the columns as a sequence, a recurrent layer, a head on outputs and states.

    ``mode``: ``nn.RNNBase``'s (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"``).
    ``initial``: ``None`` (the module's zeros), ``"given"`` (parameters, the same for every
    example: constants) or ``"computed"`` (linear maps of the pooled features: signals).
    With ``frozen`` set, the layer runs written out with its gates held fixed (`_written_out`).
    """

    def __init__(
        self,
        mode: str = "LSTM",
        layers: int = 1,
        bidirectional: bool = False,
        batch_first: bool = True,
        proj_size: int = 0,
        bias: bool = True,
        initial: str | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        projection = {"proj_size": proj_size} if proj_size else {}
        self.rnn = _layer(
            mode, num_layers=layers, bias=bias, batch_first=batch_first, dropout=dropout,
            bidirectional=bidirectional, **projection,
        )  # fmt: skip
        self.initial, self.frozen = initial, False
        self.rows = layers * (2 if bidirectional else 1)  # h_0's first dim
        self.sizes = (proj_size or HIDDEN, HIDDEN) if mode == "LSTM" else (HIDDEN,)
        if initial == "given":
            self.h0 = nn.ParameterList(torch.zeros(self.rows, 1, s) for s in self.sizes)
        if initial == "computed":
            self.to_h0 = nn.ModuleList(nn.Linear(4, self.rows * s) for s in self.sizes)
        outputs = self.sizes[0] * (2 if bidirectional else 1)
        self.head = nn.Linear(outputs + sum(self.sizes), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.stem(x))
        sequence = features.permute(0, 3, 1, 2).flatten(2)  # (B, columns, channels * rows)
        hx = self._initial_states(features)
        if self.frozen:
            hx = hx or tuple(x.new_zeros(self.rows, x.shape[0], s) for s in self.sizes)
            out, finals = _written_out(self.rnn, sequence, hx, frozen=True)
        else:
            given = hx if hx is None or len(hx) == 2 else hx[0]  # the LSTM takes (h_0, c_0)
            if not self.rnn.batch_first:
                sequence = sequence.transpose(0, 1)
            out, finals = self.rnn(sequence, given)
            out = out if self.rnn.batch_first else out.transpose(0, 1)
            finals = finals if isinstance(finals, tuple) else (finals,)
        return self.head(torch.cat([out.mean(1), *(state[-1] for state in finals)], dim=1))

    def _initial_states(self, features: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        batch = features.shape[0]
        if self.initial == "given":
            return tuple(h0.expand(-1, batch, -1) for h0 in self.h0)
        if self.initial == "computed":
            pooled = features.mean((2, 3))
            return tuple(
                layer(pooled).view(batch, self.rows, size).transpose(0, 1).contiguous()
                for layer, size in zip(self.to_h0, self.sizes, strict=True)
            )
        return None


def _case(**options) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return random_case(lambda: ColumnsThroughRecurrent(**options))


@pytest.mark.parametrize("name", CONFIGURATIONS)
def test_proportional_adds_up_and_equals_the_spec(name: str) -> None:
    model, x, mask = _case(**CONFIGURATIONS[name])
    scores = assert_proportional_adds_up(model, x, mask, 1, relative=1e-10)
    assert scores.scores.std() > 1e-3  # the features differ: the logit is not the bias alone
    assert_equals_the_spec(model, x, mask, 1, scores, relative=1e-9)


@pytest.mark.parametrize("name", CONFIGURATIONS)
def test_none_is_gradient_x_input_with_the_gates_held_fixed(name: str) -> None:
    model, x, mask = _case(**CONFIGURATIONS[name])
    assert_none_is_gradient_x_input(
        model, x, mask, 1, held_fixed(model), same_output={"rtol": 1e-12, "atol": 1e-12},
        rtol=1e-9, atol=1e-12,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_the_oracle_held_fixed_is_not_the_plain_gradient(mode: str) -> None:
    """Holding the gates fixed changes the gradient, so the test above can fail.

    (For ``RNN_RELU`` the two are the same: ``"none"`` is the plain gradient x input there.)
    """
    model, x, _ = _case(mode=mode, layers=2, bidirectional=True, initial="given")

    def gradient_x_input(forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        leaf = x.clone().requires_grad_(True)
        return torch.autograd.grad(forward(leaf)[:, 1].sum(), leaf)[0] * x

    fixed, plain = gradient_x_input(held_fixed(model)), gradient_x_input(model)
    assert (fixed - plain).abs().max() > 1e-3 * fixed.abs().max()


@pytest.mark.parametrize("layer", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
@pytest.mark.parametrize("mode", ["proportional", "none", "reference"])
def test_zennit_attributor_equals_the_captum_class(layer: str, mode: str) -> None:
    model, x, mask = _case(mode=layer, layers=2, bidirectional=True, batch_first=False,
                           initial="given")  # fmt: skip
    assert_zennit_equals_captum(model, x, mask, 1, mode)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_training_mode_without_dropout_changes_nothing(mode: str) -> None:
    """The ``train`` flag of ``torch.lstm`` and ``torch.gru`` only matters for dropout."""
    model, x, mask = _case(mode=mode, layers=2)
    expected = assert_proportional_adds_up(model, x, mask, 1, relative=1e-10)
    model.rnn.train()
    torch.testing.assert_close(
        assert_proportional_adds_up(model, x, mask, 1, relative=1e-10).scores, expected.scores
    )


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_RELU"])
def test_a_module_with_dropout_between_layers_in_training_mode_is_refused(mode: str) -> None:
    """Refused before the pass runs (``ctc_plugin.inputs.check_eval_mode``)."""
    model, x, mask = _case(mode=mode, layers=2, dropout=0.5)
    model.rnn.train()
    with pytest.raises(TrainingModeError, match=r"(LSTM|GRU|RNN) 'rnn' is in training mode"):
        CTC(model).attribute(x, 1, feature_mask=mask)


class _Variant(nn.Module):
    """``ColumnsThroughRecurrent``'s stem, and ``feed`` from its features to the layer's output."""

    def __init__(self, mode: str, feed: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                 size: int = 32, **options) -> None:  # fmt: skip
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.rnn = _layer(mode, size, batch_first=True, **options)
        self.head = nn.Linear(HIDDEN, 2)
        self.feed = feed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feed(self, torch.relu(self.stem(x))))


def _columns(features: torch.Tensor) -> torch.Tensor:
    return features.permute(0, 3, 1, 2).flatten(2)  # (B, 8, 32)


def _dropout_in_training(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The layer's function called with ``train=True`` by a module in eval mode."""
    sequence, rnn = _columns(features), model.rnn
    h0 = sequence.new_zeros(2, sequence.shape[0], HIDDEN)
    hx = (h0, h0) if rnn.mode == "LSTM" else h0
    function = getattr(torch, MODULES[rnn.mode][0])  # torch.lstm, torch.gru, torch.rnn_tanh
    out = function(sequence, hx, rnn._flat_weights, True, 2, 0.5, True, False, True)[0]
    return out.mean(1)


def _packed(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    sequence = _columns(features)
    lengths = torch.full((sequence.shape[1],), sequence.shape[0])
    out, _ = model.rnn(PackedSequence(sequence.flatten(0, 1), lengths))  # the rows alone
    return out.data.unflatten(0, (sequence.shape[0], -1)).mean(1)


def _unbatched(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    return model.rnn(features.mean((2, 3)))[0]  # (B, 4): one sequence whose steps are the copies


def _softmax_input(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    return model.rnn(torch.softmax(_columns(features), dim=-1))[0].mean(1)


def _constant_input(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    batch = features.shape[0]
    h0 = features.mean((1, 2, 3))[None, :, None].expand(1, batch, HIDDEN).contiguous()
    sequence = torch.ones(batch, 8, 32, dtype=features.dtype)
    c0 = torch.zeros(1, batch, HIDDEN, dtype=features.dtype)
    return model.rnn(sequence, (h0, c0) if model.rnn.mode == "LSTM" else h0)[0].mean(1)


#: ``mode``: the torch function the module calls and the module's class name.
MODULES = {"LSTM": ("lstm", "LSTM"), "GRU": ("gru", "GRU"), "RNN_TANH": ("rnn_tanh", "RNN")}


@pytest.mark.parametrize("mode", MODULES)
@pytest.mark.parametrize(
    ("feed", "size", "options", "message"),
    [
        (_packed, 32, {}, r"{call} in rnn \({module}\): its input is a packed sequence "
         r"\(PackedSequence\): .*; give nn\.{module} the padded batch instead"),
        (_unbatched, 4, {}, r"{call} in rnn \({module}\): its input of shape .* holds the "
         r"copies along dim 1, not along its batch dim 0"),
        (_softmax_input, 32, {}, r"{call} in rnn \({module}\): it reads the output of "
         r"torch\.softmax"),
        (_constant_input, 32, {}, r"{call} in rnn \({module}\): its input sequence does not "
         r"depend on the input while its initial state does"),
        (_dropout_in_training, 32, {"num_layers": 2}, r"{call} in the model \(_Variant\): "
         r"the dropout between its layers is random in training mode; call model\.eval\(\) "
         r"first"),
    ],
    ids=["packed sequence", "unbatched sequence", "gate-only input", "constant input",
         "dropout in training mode"],
)  # fmt: skip
def test_what_the_rule_cannot_follow_is_refused_by_name(mode, feed, size, options, message) -> None:
    function, module = MODULES[mode]
    torch.manual_seed(0)
    model = _Variant(mode, feed, size, **options).double().eval()
    assert_refused(model, message.format(call=rf"torch\.{function}", module=module))
