"""``signal.__rmatmul__(weight)`` is ``weight @ signal``: the reflected product keeps its order.

Python calls ``Tensor.__rmatmul__`` for ``other @ tensor`` where ``other`` defers to the tensor;
the matmul rule must then multiply from the left. A square token-mixing weight applied that way
(the order shows in the values, not in the shapes) gives ``"proportional"`` scores that add up to
the logit and equal those of the same model written ``weight @ signal``.
"""

from __future__ import annotations

import torch
from torch import nn

from .exactness import assert_proportional_adds_up, feature_scores, random_case


class _TokenMixing(nn.Module):
    """The image's 8 rows as tokens, mixed by a square (8, 8) weight from the left."""

    def __init__(self, reflected: bool) -> None:
        super().__init__()
        self.reflected = reflected
        self.embed, self.mixing = nn.Linear(3 * 8, 8), nn.Parameter(torch.randn(8, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.relu(self.embed(x.permute(0, 2, 1, 3).flatten(2)))  # (N, 8, 8)
        mixed = tokens.__rmatmul__(self.mixing) if self.reflected else self.mixing @ tokens
        return self.head(mixed[:, 0] - mixed[:, -1])


def test_the_reflected_product_equals_the_product_from_the_left() -> None:
    reflected, x, mask = random_case(lambda: _TokenMixing(True))
    plain, _, _ = random_case(lambda: _TokenMixing(False))
    torch.testing.assert_close(reflected(x), plain(x), rtol=0, atol=0)
    scores = assert_proportional_adds_up(reflected, x, mask, 1, relative=1e-10)
    expected = feature_scores(plain, x, mask, 1)
    torch.testing.assert_close(scores.scores, expected.scores, rtol=1e-12, atol=1e-12)
