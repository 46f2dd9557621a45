"""CTC through recurrent layers, reviewed: calls torch refuses or reads otherwise, refused clearly.

``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh`` and ``torch.rnn_relu`` have two signatures:
the padded batch ``(input, hx, params, has_biases, ...)`` and the packed sequence ``(data,
batch_sizes, hx, params, ...)``; a packed call is refused however its arguments are passed.
Initial states that do not fit the input (another batch, too few layers, the LSTM's ``h_0``
without ``c_0``, another size) and an empty sequence are refused by name, where the rule would
fail with a shape error (or, with one copy, broadcast a state torch would not). The gate copy
computes torch's own function: its output, ``h_n`` and ``c_n``, every layer and direction.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from torch import nn

from ctc_plugin import CTCAttributor, CTCComposite
from ctc_plugin.ctc.errors import UnsupportedOperationError
from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.recurrent import recurrent
from ctc_plugin.ctc.rules import GatedPass
from ctc_plugin.ctc.sharing import make_sharing

from .exactness import (
    assert_equals_the_spec,
    assert_none_is_gradient_x_input,
    assert_proportional_adds_up,
    assert_refused,
    assert_zennit_equals_captum,
    held_fixed,
    random_case,
)
from .test_recurrent import HIDDEN, _columns, _layer, _Variant, _written_out

#: ``mode`` of ``nn.RNNBase``: the torch function its module calls and the module's class name.
FUNCTIONS = {
    "LSTM": (torch.lstm, "LSTM"),
    "GRU": (torch.gru, "GRU"),
    "RNN_TANH": (torch.rnn_tanh, "RNN"),
    "RNN_RELU": (torch.rnn_relu, "RNN"),
}


def _initial(rnn: nn.RNNBase, h0: torch.Tensor) -> object:
    """``hx`` of the layer's function: ``(h_0, c_0)`` for an LSTM, ``h_0`` otherwise."""
    return (h0, h0) if rnn.mode == "LSTM" else h0


def _packed_by_keyword(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The packed signature with its options by keyword: ``f(data, batch_sizes, hx, params=...)``.

    ``data`` holds each copy's steps together (its rows are no time-major batch, but the call
    must be refused before they are read).
    """
    sequence, rnn = _columns(features), model.rnn
    batch, length, _ = sequence.shape
    h0 = sequence.new_zeros(1, batch, HIDDEN)
    options = {"params": rnn._flat_weights, "has_biases": True, "num_layers": 1, "dropout": 0.0,
               "train": False, "bidirectional": False}  # fmt: skip
    out = FUNCTIONS[rnn.mode][0](
        sequence.flatten(0, 1), torch.full((length,), batch), _initial(rnn, h0), **options
    )[0]
    return out.unflatten(0, (batch, length)).mean(1)


def _calling(hx: Callable[[nn.RNNBase, torch.Tensor], object], layers: int = 1):
    """A feed calling the layer's function on the columns with ``hx(rnn, sequence)``."""

    def feed(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
        sequence, rnn = _columns(features), model.rnn
        function = FUNCTIONS[rnn.mode][0]
        state = hx(rnn, sequence)
        return function(sequence, state, rnn._flat_weights, True, layers, 0.0, False, False,
                        True)[0].mean(1)  # fmt: skip

    return feed


def _one_state_for_the_batch(rnn: nn.RNNBase, sequence: torch.Tensor) -> object:
    """Batch 1 for every sequence (torch's GRU refuses it; its LSTM reads beyond the state)."""
    return _initial(rnn, sequence.new_full((1, 1, HIDDEN), 0.5))


def _one_layer_of_two(rnn: nn.RNNBase, sequence: torch.Tensor) -> object:
    """The states of one layer for a call of two layers (torch: "Expected more hidden states")."""
    return _initial(rnn, sequence.new_full((1, sequence.shape[0], HIDDEN), 0.5))


def _another_size(rnn: nn.RNNBase, sequence: torch.Tensor) -> object:
    """States of size ``HIDDEN + 1``."""
    return _initial(rnn, sequence.new_full((1, sequence.shape[0], HIDDEN + 1), 0.5))


def _h0_alone(rnn: nn.RNNBase, sequence: torch.Tensor) -> tuple[torch.Tensor]:
    """An LSTM given ``(h_0,)`` (torch: "lstm expects two hidden states")."""
    return (sequence.new_full((1, sequence.shape[0], HIDDEN), 0.5),)


def _empty(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The module on a sequence of length 0 (torch: "Expected sequence length to be larger")."""
    return model.rnn(_columns(features)[:, :0])[0].sum(1)


@pytest.mark.parametrize("mode", FUNCTIONS)
def test_a_packed_call_with_its_options_by_keyword_is_refused_as_packed(mode: str) -> None:
    """Told apart by ``batch_sizes`` (an integer tensor), not by how many arguments are positional.

    Before: taken for the padded signature, refused as "an unbatched 2-d sequence".
    """
    function, module = FUNCTIONS[mode]
    torch.manual_seed(0)
    model = _Variant(mode, _packed_by_keyword).double().eval()
    assert_refused(
        model,
        rf"torch\.{function.__name__} in the model \(_Variant\): its input is a packed sequence "
        rf"\(PackedSequence\): .*; give nn\.{module} the padded batch instead",
    )


@pytest.mark.parametrize("mode", FUNCTIONS)
@pytest.mark.parametrize(
    ("hx", "layers", "message"),
    [
        (_one_state_for_the_batch, 1, r"its initial state h_0 of shape \(1, 1, 5\) does not fit "
         r"its input: it needs shape \(1, 3, 5\) \(layers x directions, the input's 3 "
         r"sequences, the state's size\)"),
        (_one_layer_of_two, 2, r"its initial state h_0 of shape \(1, 3, 5\) does not fit its "
         r"input: it needs shape \(2, 3, 5\)"),
        (_another_size, 1, r"its initial state h_0 of shape \(1, 3, 6\) does not fit its "
         r"input: it needs shape \(1, 3, 5\)"),
    ],
    ids=["batch of one", "one layer of two", "another size"],
)  # fmt: skip
def test_initial_states_that_do_not_fit_the_input_are_refused_by_name(
    mode: str, hx: Callable, layers: int, message: str
) -> None:
    """Before: an ``unflatten``, index or matrix-product error from inside the rule."""
    function, _ = FUNCTIONS[mode]
    torch.manual_seed(0)
    model = _Variant(mode, _calling(hx, layers), num_layers=layers).double().eval()
    error = assert_refused(model, rf"torch\.{function.__name__} in the model \(_Variant\): "
                           + message)  # fmt: skip
    assert "a CTC pass runs every example's copies as one batch" in str(error)


def test_an_lstm_given_h0_alone_is_refused_by_name() -> None:
    """Before: ``ValueError: not enough values to unpack`` from the LSTM's step."""
    torch.manual_seed(0)
    model = _Variant("LSTM", _calling(_h0_alone)).double().eval()
    assert_refused(
        model,
        r"torch\.lstm in the model \(_Variant\): it takes 2 initial states \(h_0, c_0\), "
        r"not 1",
    )


@pytest.mark.parametrize("mode", FUNCTIONS)
def test_an_empty_sequence_is_refused_by_name(mode: str) -> None:
    """Before: ``RuntimeError: stack expects a non-empty TensorList``."""
    function, module = FUNCTIONS[mode]
    torch.manual_seed(0)
    model = _Variant(mode, _empty).double().eval()
    assert_refused(
        model,
        rf"torch\.{function.__name__} in rnn \({module}\): its input sequence is empty "
        r"\(length 0\)",
    )


def _functions_and_options() -> list[tuple]:
    """Every layer with 1 or 3 layers, 1 or 2 directions, both layouts, with and without
    biases, the LSTM with and without ``proj_size``."""
    found = []
    for mode, layers, bidirectional, batch_first, biases in itertools.product(
        FUNCTIONS, (1, 3), (False, True), (True, False), (True, False)
    ):
        for projection in (0, 2) if mode == "LSTM" else (0,):
            found.append((mode, layers, bidirectional, batch_first, biases, projection))
    return found


def _module(mode: str, layers: int, bidirectional: bool, batch_first: bool, biases: bool,
            projection: int) -> nn.RNNBase:  # fmt: skip
    options = {"num_layers": layers, "bidirectional": bidirectional, "batch_first": batch_first,
               "bias": biases}  # fmt: skip
    if mode == "LSTM":
        return nn.LSTM(6, 4, proj_size=projection, **options)
    if mode == "GRU":
        return nn.GRU(6, 4, **options)
    return nn.RNN(6, 4, nonlinearity=mode.removeprefix("RNN_").lower(), **options)


def _initial_states(
    ctx: GatedPass, rnn: nn.RNNBase, initial: str, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """``(h_0[, c_0])``: zeros, a constant per example, or signals (the copies along dim 1)."""
    rows, batch = rnn.num_layers * (2 if rnn.bidirectional else 1), ctx.layout.batch
    sizes = (rnn.proj_size or rnn.hidden_size, rnn.hidden_size) if rnn.mode == "LSTM" else (4,)
    states = []
    for size in sizes:
        if initial == "zeros":
            states.append(torch.zeros(rows, batch, size, dtype=torch.float64))
            continue
        if initial == "signals":
            value = torch.randn(rows, batch, size, dtype=torch.float64, generator=generator)
            states.append(ctx.tag(value, axis=1))
            continue
        examples, copies = ctx.layout.examples, ctx.layout.copies
        value = torch.randn(rows, examples, 1, size, dtype=torch.float64, generator=generator)
        states.append(value.expand(-1, -1, copies, -1).reshape(rows, batch, size))
    return tuple(states)


def _gate_rows(value: torch.Tensor, dim: int, layout: CopyLayout) -> torch.Tensor:
    """The gate copies' rows of a tensor whose copies lie along ``dim``."""
    return value.detach().unflatten(dim, (layout.examples, layout.copies)).select(dim + 1, 0)


def _assert_the_gate_copy_is_torchs(configuration: tuple, initial: str, seed: int) -> None:
    """`recurrent` on 2 examples of 4 random copies each, against torch on the gate copies."""
    mode, layers, bidirectional, batch_first, biases, _ = configuration
    generator = torch.Generator().manual_seed(seed)
    layout = CopyLayout(examples=2, features=3, reference_full=False, baseline=False)
    torch.manual_seed(seed)
    rnn = _module(*configuration).double()
    ctx = GatedPass(layout, make_sharing("proportional"))
    shape = (layout.batch, 5, 6) if batch_first else (5, layout.batch, 6)
    copies_dim = 0 if batch_first else 1
    x = ctx.tag(torch.randn(shape, dtype=torch.float64, generator=generator), axis=copies_dim)
    states = _initial_states(ctx, rnn, initial, generator)
    function = FUNCTIONS[mode][0]
    options = (rnn._flat_weights, biases, layers, 0.0, False, bidirectional, batch_first)

    def arguments(sequence: torch.Tensor, hx: tuple[torch.Tensor, ...]) -> tuple:
        return (sequence, hx if mode == "LSTM" else hx[0], *options)

    with torch.no_grad():
        got = recurrent(ctx, function, arguments(x, states), {})
        gate_states = tuple(_gate_rows(state, 1, layout) for state in states)
        expected = function(*arguments(_gate_rows(x, copies_dim, layout), gate_states))
    assert len(got) == len(expected)
    for index, (value, reference) in enumerate(zip(got, expected, strict=True)):
        dim = copies_dim if index == 0 else 1  # h_n and c_n: (layers x directions, batch, size)
        torch.testing.assert_close(
            _gate_rows(value, dim, layout), reference, rtol=1e-12, atol=1e-12,
            msg=lambda text, index=index: f"{configuration}, {initial}, result {index}: {text}",
        )  # fmt: skip


@pytest.mark.parametrize("initial", ["zeros", "constants", "signals"])
def test_the_gate_copy_computes_torchs_own_function(initial: str) -> None:
    """Output, ``h_n`` and ``c_n`` of the gate copies equal the function on them (1e-12).

    Every layer, with 1 or 3 layers, 1 or 2 directions, either layout, with or without biases,
    the LSTM with or without ``proj_size``; zero, constant or computed initial states.
    """
    for seed, configuration in enumerate(_functions_and_options()):
        _assert_the_gate_copy_is_torchs(configuration, initial, seed)


class RowsWithMixedStates(nn.Module):
    """Sequencer's layout: each row of the feature map a sequence, ``(N * rows, columns, C)``.

    Each initial state is ``"given"`` (a parameter per row of the map, a constant that differs
    between the sequences of one example), ``"computed"`` (a linear map of the pooled features
    for every row, a signal) or ``"zeros"``. With ``frozen``, the layer runs written out with its
    gates held fixed (``test_recurrent._written_out``).
    """

    def __init__(self, mode: str, kinds: tuple[str, ...], layers: int = 1,
                 bidirectional: bool = False, proj_size: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        projection = {"proj_size": proj_size} if proj_size else {}
        self.rnn = _layer(mode, 4, batch_first=True, num_layers=layers,
                          bidirectional=bidirectional, **projection)  # fmt: skip
        self.kinds, self.frozen = kinds, False
        self.rows = layers * (2 if bidirectional else 1)
        sizes = (proj_size or HIDDEN, HIDDEN) if mode == "LSTM" else (HIDDEN,)
        self.given = nn.ParameterList(torch.zeros(self.rows, 8, size) for size in sizes)
        self.maps = nn.ModuleList(nn.Linear(4, self.rows * size) for size in sizes)
        outputs = sizes[0] * (2 if bidirectional else 1)
        self.head = nn.Linear(outputs + sum(sizes), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.stem(x))  # (N, 4, 8, 8)
        batch = features.shape[0]
        sequences = features.permute(0, 2, 3, 1).reshape(batch * 8, 8, 4)
        hx = tuple(
            self._state(kind, given, linear, features)
            for kind, given, linear in zip(self.kinds, self.given, self.maps, strict=True)
        )
        if self.frozen:
            out, finals = _written_out(self.rnn, sequences, hx, frozen=True)
        else:
            out, finals = self.rnn(sequences, hx if len(hx) == 2 else hx[0])
            finals = finals if isinstance(finals, tuple) else (finals,)
        states = [state[-1].reshape(batch, 8, -1).mean(1) for state in finals]
        return self.head(torch.cat([out.reshape(batch, 64, -1).mean(1), *states], 1))

    def _state(self, kind: str, given: torch.Tensor, linear: nn.Linear,
               features: torch.Tensor) -> torch.Tensor:  # fmt: skip
        batch, size = features.shape[0], given.shape[-1]
        if kind == "given":
            return given[:, None].expand(-1, batch, -1, -1).reshape(self.rows, batch * 8, size)
        if kind == "computed":
            per_example = linear(features.mean((2, 3))).view(batch, 1, self.rows, size)
            rows = per_example.expand(-1, 8, -1, -1).reshape(batch * 8, self.rows, size)
            return rows.transpose(0, 1)
        return features.new_zeros(self.rows, batch * 8, size)


@pytest.mark.parametrize(
    ("mode", "kinds", "options"),
    [
        ("LSTM", ("computed", "given"), {"layers": 2, "bidirectional": True, "proj_size": 3}),
        ("LSTM", ("given", "computed"), {}),
        ("LSTM", ("zeros", "given"), {"layers": 2, "bidirectional": True}),
        ("GRU", ("given",), {"layers": 2, "bidirectional": True}),
        ("RNN_TANH", ("given",), {}),
        ("RNN_RELU", ("given",), {"layers": 2}),
    ],
)
def test_rows_as_sequences_with_states_per_row_and_mixed(mode, kinds, options) -> None:
    """The copies' sequences ``m`` per copy (N*C*m rows), a constant state per row of the map,
    an LSTM's ``h_0`` computed and ``c_0`` given (and the other way round): ``"proportional"``
    adds up and equals the spec, ``"none"`` is gradient x input with the gates held fixed."""
    model, x, mask = random_case(lambda: RowsWithMixedStates(mode, kinds, **options))
    scores = assert_proportional_adds_up(model, x, mask, 1, relative=1e-10)
    assert_equals_the_spec(model, x, mask, 1, scores, relative=1e-9)
    assert_none_is_gradient_x_input(
        model, x, mask, 1, held_fixed(model), same_output={"rtol": 1e-12, "atol": 1e-12},
        rtol=1e-9, atol=1e-12,
    )  # fmt: skip


class EncoderDecoder(nn.Module):
    """An encoder over the columns (sequence first, bidirectional) whose ``h_n`` (and ``c_n``)
    start a decoder of two layers over the rows (batch first): initial states that are another
    layer's final states, signals with the copies along dim 1."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.encoder = _layer(mode, 32, bidirectional=True)
        self.decoder = _layer(mode, 32, num_layers=2, batch_first=True)
        self.head = nn.Linear(HIDDEN, 3)
        self.frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.stem(x))
        _, finals = self._run(self.encoder, features.permute(0, 3, 1, 2).flatten(2), None)
        out, finals = self._run(self.decoder, features.permute(0, 2, 1, 3).flatten(2), finals)
        return self.head(out.mean(1) + finals[-1][-1])

    def _run(self, layer: nn.RNNBase, sequence: torch.Tensor, hx: tuple | None) -> tuple:
        """``(output, (h_n[, c_n]))`` of a batch-first ``sequence``, as the flags say."""
        if self.frozen:
            states = 2 if layer.mode == "LSTM" else 1
            rows = layer.num_layers * (2 if layer.bidirectional else 1)
            zeros = sequence.new_zeros(rows, sequence.shape[0], HIDDEN)
            return _written_out(layer, sequence, hx or (zeros,) * states, frozen=True)
        given = hx if hx is None or layer.mode == "LSTM" else hx[0]
        out, finals = layer(sequence if layer.batch_first else sequence.transpose(0, 1), given)
        out = out if layer.batch_first else out.transpose(0, 1)
        return out, finals if isinstance(finals, tuple) else (finals,)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_a_layer_started_from_another_layers_final_states(mode: str) -> None:
    """``"proportional"`` adds up, ``"none"`` is gradient x input with the gates held fixed, and
    the Zennit attributor equals the Captum class in ``"reference"``."""
    model, x, mask = random_case(lambda: EncoderDecoder(mode))
    assert_proportional_adds_up(model, x, mask, 1, relative=1e-10)
    assert_none_is_gradient_x_input(
        model, x, mask, 1, held_fixed(model), same_output={"rtol": 1e-12, "atol": 1e-12},
        rtol=1e-9, atol=1e-12,
    )  # fmt: skip
    assert_zennit_equals_captum(model, x, mask, 1, "reference")


class ColumnsThroughLSTMWithModules(nn.Module):
    """``test_recurrent.ColumnsThroughRecurrent`` with its ReLU a module, so that under
    ``functional="raise"`` the LSTM is the one operation outside every hooked module."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.relu = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.rnn = nn.LSTM(32, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence = self.relu(self.stem(x)).permute(0, 3, 1, 2).flatten(2)
        return self.head(self.rnn(sequence)[0].mean(1))


def test_zennit_with_functional_raise_refuses_the_lstm_by_name_and_restores_the_model() -> None:
    """``nn.LSTM`` has no hook in the CTC composite: its ``torch.lstm`` runs outside every hooked
    module, so ``functional="raise"`` refuses it (``"intercept"`` routes it to the rule: see
    ``test_recurrent``), and the biases the hooks took off are back."""
    model, x, mask = random_case(ColumnsThroughLSTMWithModules)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with torch.no_grad():
        logits = model(x)
    one_hot = torch.eye(3, dtype=x.dtype)[[1] * x.shape[0]]
    composite = CTCComposite(bias_sharing="proportional")
    with pytest.raises(UnsupportedOperationError, match=r"through torch\.lstm in .*\(LSTM\): "
                       r".* it runs outside "
                       r"every module with a CTC hook\. Use CTCAttributor\(\.\.\., "
                       r"functional='intercept'\)"):  # fmt: skip
        with CTCAttributor(model, composite, feature_mask=mask, functional="raise") as zennit:
            zennit(x, one_hot)
    assert not torch._C._len_torch_function_stack()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, rtol=0, atol=0)  # no hook left behind
