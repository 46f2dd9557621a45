"""A recurrent layer whose weights depend on the input is refused by name.

The recurrent rule holds ``W_ih``, ``W_hh``, the biases and the LSTM's ``W_hr`` fixed: it is
linear in the copies of its input sequence and initial states only. Weights computed from the
input (a propagated tensor among ``params``: a hypernetwork's output) would be read as if they
were the same for every copy; the rule refuses them, for every layer's torch function, whichever
of the parameters depends on the input.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.ctc.errors import UnsupportedOperationError
from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.recurrent import recurrent
from ctc_plugin.ctc.speedups import DEFAULT

from .test_recurrent_review import FUNCTIONS, _initial, _module


@pytest.mark.parametrize("mode", list(FUNCTIONS))
@pytest.mark.parametrize("which", [0, 1, 2, 3], ids=["W_ih", "W_hh", "b_ih", "b_hh"])
def test_weights_computed_from_the_input_are_refused_by_name(mode: str, which: int) -> None:
    """One copy per example (two rows), so that any weight with an even first dim can carry
    the copies; the call is refused before it runs."""
    layout = CopyLayout(examples=2, features=0, reference_full=False, baseline=False)
    ctx = DEFAULT.gated_pass(layout, DEFAULT.sharing("proportional"))
    torch.manual_seed(0)
    rnn = _module(mode, 1, False, True, True, 0).double()
    params = [p.detach().clone() for p in rnn._flat_weights]
    params[which] = ctx.tag(params[which])  # as if a hypernetwork computed it from the input
    sequence = ctx.tag(torch.randn(layout.batch, 5, 6, dtype=torch.float64))
    h0 = torch.zeros(1, layout.batch, 4, dtype=torch.float64)
    function = FUNCTIONS[mode][0]
    options = (params, True, 1, 0.0, False, False, True)
    with pytest.raises(UnsupportedOperationError, match="its weights depend on the input"):
        recurrent(ctx, function, (sequence, _initial(rnn, h0), *options), {})
