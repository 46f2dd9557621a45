"""A constant repeated along the batch with the heads merged into it: one bias per example.

Attention written with the heads merged into the batch, ``(B * heads, L, d)``, often adds a
per-head constant repeated to that size, ``bias.repeat(B, 1, 1)``, with ``B`` read from the
block's input. Inside the CTC pass ``B`` is the pass's batch (every example's copies, stacked
along dim 0 example by example), so the constant has ``heads`` rows per copy, the same for
every copy: the bias the model adds to each example. Added to the values (a signal) it is a
bias shared among the copies, as the same bias added broadcast, ``(B, heads, L, d) + bias``,
is; added to the logits it is part of the gate, as before. Both forms score alike in every
bias-sharing mode (float64). A constant sized for the model's own batch (a batch size fixed
beforehand) does not fit the pass: refused, saying so and what to do.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .exactness import (
    assert_exact_in_every_mode,
    assert_refused,
    assert_same_scores_in_every_mode,
    random_case,
)

D, HEADS, TOKENS = 8, 2, 16
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


class _MergedHeads(nn.Module):
    """Patch tokens, attention with the heads merged into the batch, a head.

    ``values`` and ``logits`` say where a learned per-head constant is added: ``"repeat"``
    (``bias.repeat(B, 1, 1)`` meeting ``(B * heads, ...)``), ``"broadcast"`` (the signal
    reshaped to ``(B, heads, ...)`` plus the bias) or ``None``. ``batch`` fixes ``B`` for the
    repeat instead of reading it from the tokens.
    """

    def __init__(
        self, values: str | None, logits: str | None = None, batch: int | None = None
    ) -> None:
        super().__init__()
        self.values, self.logits, self.batch = values, logits, batch
        self.stem = nn.Conv2d(3, D, 2, stride=2)
        self.qkv = nn.Linear(D, 3 * D)
        self.value_bias = nn.Parameter(torch.randn(HEADS, TOKENS, D // HEADS))
        self.position_bias = nn.Parameter(torch.randn(HEADS, TOKENS, TOKENS))
        self.head = nn.Linear(D, 2)

    def _added(self, how: str | None, signal: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``signal`` (B * heads, ...) plus ``bias`` (heads, ...), as ``how`` says."""
        if how is None:
            return signal
        if how == "repeat":
            batch = signal.shape[0] // HEADS if self.batch is None else self.batch
            return signal + bias.repeat(batch, 1, 1)
        return (signal.unflatten(0, (-1, HEADS)) + bias).flatten(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = F.gelu(self.stem(x)).flatten(2).transpose(1, 2)  # (B, T, D)
        batch = tokens.shape[0]
        q, k, v = (
            t.reshape(batch, TOKENS, HEADS, -1).transpose(1, 2).reshape(batch * HEADS, TOKENS, -1)
            for t in self.qkv(tokens).chunk(3, dim=-1)
        )
        v = self._added(self.values, v, self.value_bias)
        logits = self._added(self.logits, q @ k.mT * (q.shape[-1] ** -0.5), self.position_bias)
        out = F.relu(logits.softmax(-1) @ v)
        out = out.reshape(batch, HEADS, TOKENS, -1).transpose(1, 2).flatten(2)
        return self.head((tokens + out).mean(1))


#: name: (values, logits) of the model with the repeated constant.
PLACES = {
    "added to the values (a signal)": ("repeat", None),
    "added to the logits (the gate)": (None, "repeat"),
    "both": ("repeat", "repeat"),
}


@pytest.mark.parametrize("place", PLACES)
def test_a_repeated_constant_scores_as_the_same_constant_broadcast(place: str) -> None:
    values, logits = PLACES[place]
    repeated, x, mask = random_case(lambda: _MergedHeads(values, logits))
    broadcast = _MergedHeads(values and "broadcast", logits and "broadcast").double().eval()
    broadcast.load_state_dict(repeated.state_dict())
    torch.testing.assert_close(repeated(x), broadcast(x), **TIGHT)
    assert_same_scores_in_every_mode(repeated, broadcast, x, mask, 0, **TIGHT)
    assert_exact_in_every_mode(repeated, x, mask, 0)


def test_a_constant_sized_for_the_models_own_batch_is_refused_saying_what_to_do() -> None:
    """``bias.repeat(1, 1, 1)`` for a batch of one fixed beforehand: the pass has more rows.

    (``"none"`` takes one backward pass through the model's own batch, where it fits.)
    """
    model = _MergedHeads("repeat", batch=1).double().eval()
    error = assert_refused(
        model,
        r"torch\.Tensor\.add in the model \(_MergedHeads\): a constant of shape \(2, 16, 4\) "
        r"that does not broadcast per example \(it meets the copies, of shape \(\d+, 16, 4\), "
        r"along their first dimension, where CTC stacks the copies of every example, 2 rows "
        r"per copy: a constant sized for the model's own batch does not fit them",
        modes=("proportional", "reference"),
    )
    assert "(1, heads, L, L)" in error.reason
    assert "bias.repeat(x.shape[0], 1, 1)" in error.reason
    # the per-head advice first, where it applies; the unbatched input last
    assert error.reason.index("per-head") < error.reason.index("x.unsqueeze(0)")


@pytest.mark.parametrize(
    ("constant", "opening"),
    [
        ((2, 16, 4), ", 2 rows per copy: a constant sized for the model's own batch"),
        ((3, 16, 4), ": if the inputs are one example without its batch dimension"),
    ],
)
def test_the_per_head_advice_comes_first_only_for_rows_that_are_a_multiple_of_the_heads(
    constant: tuple[int, ...], opening: str
) -> None:
    """Copies holding 2 rows each (the heads merged into a pass batch of 5) meet a constant of
    2 rows (a per-head bias repeated for a batch of one) or of 3 (no number of heads)."""
    from ctc_plugin.ctc.errors import constant_shape_error

    reason = constant_shape_error("torch.add", constant, (10, 16, 4), 5).reason
    assert f"stacks the copies of every example{opening}" in reason
    assert ("per-head" in reason) == (constant[0] == 2)
