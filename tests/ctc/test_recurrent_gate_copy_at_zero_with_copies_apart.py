"""Where the gate copy's pre-activation is 0 but the other copies' are not, the tensor steps
still equal the rules.

``tanh``'s rescale gate ``tanh(x) / x`` is 0 where the gate copy's ``x`` is 0, and ``relu``'s
pattern is ``x > 0``: off where the gate copy's ``x`` is 0. Every copy is multiplied by the gate
copy's factor, so the convention shows only where the gate copy is 0 and the other copies are
not (their parts cancel). Here one example's gate copy is all zeros, without biases and from
zero states, so every pre-activation of its gate copy is 0 at every step, while its other copies
are random: `TensorSteps` must give those copies what the rules (`Steps`) give them, for every
layer, one or two directions, in the modes that run directions as one and apart.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.ctc.speedups import DEFAULT

from .test_recurrent_review import FUNCTIONS, _module
from .test_recurrent_steps import TOLERANCE, _fast_and_spec, _inputs, _layout


@pytest.mark.parametrize("mode", ["proportional", "reference"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["one direction", "two"])
@pytest.mark.parametrize("layer", list(FUNCTIONS))
def test_copies_beside_a_zero_gate_copy_get_what_the_rules_give(
    layer: str, bidirectional: bool, mode: str
) -> None:
    layout = _layout(mode)
    torch.manual_seed(0)
    rnn = _module(layer, 2, bidirectional, True, False, 0).double()
    sequence, states = _inputs(rnn, layout, "zeros", 1, seed=3)
    grouped = sequence.view(layout.examples, layout.copies, *sequence.shape[1:])
    grouped[1, 0] = 0  # the second example's gate copy; its other copies stay random
    got, expected = _fast_and_spec(DEFAULT, layout, mode, rnn, sequence, states)
    assert sequence.view(layout.examples, layout.copies, -1)[1, 1:].abs().min() > 0
    for value, reference in zip(got, expected, strict=True):
        torch.testing.assert_close(value, reference, **TOLERANCE)
