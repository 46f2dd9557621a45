"""`TensorSteps.rescale` gives the gate copy the activation's exact output, bit for bit.

The rescale gate multiplies every copy by ``y / x`` of the gate copy; the gate copy itself gets
``y = tanh(x)``, not ``x * (y / x)``, which rounds differently (the rule
[`rescale_gate`][ctc_plugin.ctc.gate_rules.GateRules.rescale_gate] does the same). So the gate
copy of a recurrent layer computes the model's own step, and one direction at a time the tensor
steps agree with the rules to the bit. Checked in float32, where ``x * (y / x)`` differs from
``y`` in many elements, with and without autograd (the ``"none"`` gradient path).
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.ctc.recurrent_steps import TensorSteps
from ctc_plugin.ctc.speedups import DEFAULT

from .test_recurrent_review import _module
from .test_recurrent_steps import _fast_and_spec, _inputs, _layout


@pytest.mark.parametrize("gradient", [False, True], ids=["values", "with autograd"])
def test_the_gate_copy_of_a_rescale_is_the_activation_bit_for_bit(gradient: bool) -> None:
    layout = _layout("proportional")
    steps = TensorSteps(DEFAULT.gated_pass(layout, DEFAULT.sharing("proportional")), layout.batch)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(layout.examples, layout.copies, 4096, generator=generator) * 3
    x.requires_grad_(gradient)
    with torch.set_grad_enabled(gradient):
        out = steps.rescale(x * 1, torch.tanh)
    assert torch.equal(out[:, 0].detach(), torch.tanh(x[:, 0].detach()))
    ratio = torch.tanh(x[:, :1].detach()) / x[:, :1].detach()
    torch.testing.assert_close(out[:, 1:].detach(), x[:, 1:].detach() * ratio, rtol=0, atol=0)


@pytest.mark.parametrize("layer", ["LSTM", "GRU", "RNN_TANH"])
def test_one_direction_of_tensor_steps_agrees_with_the_rules_to_the_bit(layer: str) -> None:
    """The gate copy's rows of the output and final states, in float32."""
    layout = _layout("proportional")
    torch.manual_seed(0)
    rnn = _module(layer, 2, False, True, True, 0)
    sequence, states = _inputs(rnn, layout, "zeros", 1, seed=5)
    sequence, states = sequence.float() * 3, tuple(state.float() for state in states)
    got, expected = _fast_and_spec(DEFAULT, layout, "proportional", rnn, sequence, states)
    for value, reference in zip(got, expected, strict=True):
        dim = 0 if value is got[0] else 1
        gate_rows = [value.narrow(dim, row * layout.copies, 1) for row in range(2)]
        spec_rows = [reference.narrow(dim, row * layout.copies, 1) for row in range(2)]
        for mine, theirs in zip(gate_rows, spec_rows, strict=True):
            assert torch.equal(mine, theirs)
