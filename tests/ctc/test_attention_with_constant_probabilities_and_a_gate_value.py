"""``scaled_dot_product_attention`` with a gate tensor as its value.

With a learned query and key (constants, expanded to the batch), or a query and key computed
from the input (the full pass's probabilities, a gate), the probabilities are the same for every
copy, and the attention is linear in its value. A sigmoid of the signal is a gate
tensor that is also a signal (its copies are the rule's rescaled copies, as a linear layer reads
them): the attention of it must mix each copy's rows, so the ``"proportional"`` scores add up to
the logit, as they do for the same model without the attention. A softmax of the signal is
gate-only (every copy holds the full pass's value): the attention of it is gate-only too, and
a model whose output is computed from it is refused by name, not given scores that do not add up.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .exactness import assert_equals_the_spec, assert_proportional_adds_up, assert_refused

TOKENS = 5


class _LearnedQueries(nn.Module):
    """Tokens (N, T, 3) embedded; ``activation`` of them attended by learned queries and keys."""

    def __init__(self, activation) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.activation = activation
        self.embed, self.head = nn.Linear(3, 4), nn.Linear(4, 3)
        self.query, self.key = (
            nn.Parameter(torch.randn(1, 3, 4)),
            nn.Parameter(torch.randn(1, 5, 4)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        value = self.activation(self.embed(x))
        query, key = self.query.expand(batch, -1, -1), self.key.expand(batch, -1, -1)
        return self.head(F.scaled_dot_product_attention(query, key, value).mean(1))


class _SelfAttention(nn.Module):
    """Tokens (N, T, 3) attending to each other; the value is ``activation`` of a projection."""

    def __init__(self, activation) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.activation = activation
        self.query, self.key, self.value = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(3, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = self.activation(self.value(x))
        attended = F.scaled_dot_product_attention(self.query(x), self.key(x), value)
        return self.head(attended.mean(1))


QUERIES = {"learned-queries": _LearnedQueries, "self-attention": _SelfAttention}


def _case(activation, queries="learned-queries"):
    model = QUERIES[queries](activation).double().eval()
    x = torch.randn(2, TOKENS, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = torch.tensor([0, 0, 1, 2, 2]).view(1, TOKENS, 1).expand(1, TOKENS, 3)
    return model, x, mask


@pytest.mark.parametrize("queries", list(QUERIES))
@pytest.mark.parametrize("activation", [torch.sigmoid, torch.tanh], ids=["sigmoid", "tanh"])
def test_the_attention_of_a_sigmoid_of_the_signal_adds_up(activation, queries) -> None:
    model, x, mask = _case(activation, queries)
    scores = assert_proportional_adds_up(model, x, mask, 1, relative=1e-10)
    assert_equals_the_spec(model, x, mask, 1, scores, relative=1e-9)


@pytest.mark.parametrize("queries", list(QUERIES))
def test_the_attention_of_a_softmax_of_the_signal_is_gate_only_and_refused_as_the_output(queries):
    model, x, mask = _case(lambda h: torch.softmax(h, dim=-1), queries)
    assert_refused(model, "the model's output is computed from its output", x=x, mask=mask)
