"""``F.scaled_dot_product_attention`` with constant operands: learned queries, keys, values.

A constant query that broadcasts over the batch (learned latent queries of shape ``(1, Q, D)``,
attention pooling), constant keys and values with one row per copy (signal queries reading a
learned memory expanded to the batch), and a constant query and keys (learned pooling weights:
the probabilities are a constant, the output linear in the values; with a mask computed from the
input they are the full pass's again). The probabilities are the
full pass's, the values linear (a constant query), or the result a gate-only tensor that may
scale the signal (constant values). An audit of user-written modules found the first two
failing inside the rule with torch errors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .exactness import assert_exact_in_every_mode, random_case

D = 8


class _AttentionWithConstants(nn.Module):
    """Tokens of a convolution attend with learned constants, then a linear head.

    ``"latent query"``: a ``(1, 2, D)`` query (broadcast by the attention) pools the tokens'
    keys and values. ``"memory"``: the tokens' queries read a learned memory expanded to the
    batch, whose output (a gate-only tensor of the full pass) scales the tokens. ``"learned
    pooling"``: the latent query reads learned keys, one per token: constant probabilities
    pool the tokens' values. ``"scored pooling"``: the same with a score of each token added
    to the attention logits (a mask computed from the input: the probabilities are the full
    pass's, a gate; taken as constants, each copy got the softmax of its own scores).
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.stem = nn.Conv2d(3, D, 3, padding=1)
        self.latent = nn.Parameter(torch.randn(1, 2, D))
        self.memory = nn.Parameter(torch.randn(1, 4, D))
        self.keys = nn.Parameter(torch.randn(1, 64, D))
        self.score = nn.Linear(D, 1)
        self.query, self.key, self.value = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.head = nn.Linear(2 * D, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = F.relu(self.stem(x)).flatten(2).transpose(1, 2)  # (B, 64, D)
        if self.kind == "latent query":
            pooled = F.scaled_dot_product_attention(
                self.latent, self.key(tokens), self.value(tokens)
            )
        elif self.kind == "learned pooling":
            pooled = F.scaled_dot_product_attention(self.latent, self.keys, self.value(tokens))
        elif self.kind == "scored pooling":
            scores = self.score(tokens).transpose(1, 2)  # (B, 1, 64): added to the logits
            latent = self.latent.expand(tokens.shape[0], -1, -1)
            pooled = F.scaled_dot_product_attention(
                latent, self.keys, self.value(tokens), attn_mask=scores
            )
        else:
            memory = self.memory.expand(tokens.shape[0], -1, -1)
            read = F.scaled_dot_product_attention(self.query(tokens), memory, memory)
            pooled = (tokens * torch.sigmoid(read)).unflatten(1, (2, 32)).mean(2)
        return self.head(pooled.flatten(1))


@pytest.mark.parametrize("kind", ["latent query", "memory", "learned pooling", "scored pooling"])
def test_attention_with_a_constant_query_or_constant_keys_and_values_is_exact(kind: str) -> None:
    model, x, mask = random_case(lambda: _AttentionWithConstants(kind))
    assert_exact_in_every_mode(model, x, mask, 0)
