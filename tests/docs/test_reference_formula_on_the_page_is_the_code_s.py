"""The published formula on "How CTC works" says what `ctc_plugin.ctc.sharing` computes.

The page gave ``ρ_k = ceil(1000 |q(z_k) / q(z_F)|) / 1000`` (a quotient of the rounded ``q``
values, which can step over a multiple of 1/1000) and ``σ = std(log10 r)`` over every entry;
the code divides the whole numbers ``a_k = ceil(10 z_k)`` and ``a_F = ceil(10 z_F)`` and leaves
the entries with ``r = 0`` out of ``σ``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ctc_plugin.ctc.sharing import reference_shares, reference_spread

PAGE = Path(__file__).resolve().parents[2] / "docs" / "how-ctc-works.md"


def _formula() -> str:
    text = PAGE.read_text()
    start = text.index("**The published formula**")
    return text[start : text.index("**Precision.**", start)]


def test_the_ratio_is_of_the_whole_numbers_as_computed():
    formula = _formula()
    assert "`a_k = ceil(10 z_k)`" in formula and "`a_F = ceil(10 z_F)`" in formula
    assert "`ρ_k = ceil(1000 |a_k| / |a_F|) / 1000`, 0 where `a_F = 0`" in formula
    # what the code computes: 0.3 / 0.1 as whole numbers is exactly 3, not ceil(2999.99..) + 1
    z_full = torch.full((1, 1, 4), 0.1, dtype=torch.float64)
    z = torch.full((1, 1, 4), 0.3, dtype=torch.float64)
    shares = reference_shares(z, z_full, torch.ones(1, 1, 1, dtype=torch.float64), (2,))
    assert torch.equal(shares, torch.full_like(z, 3.0))


def test_the_spread_leaves_out_the_entries_whose_ratio_is_zero():
    formula = _formula()
    assert "`σ = std(log10 r)` over the entries with `r ≠ 0`" in formula
    # n = (0, 1, 2, 3): the entry with r = 0 is left out, as the page now says
    z_full = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]], dtype=torch.float64)
    sigma = reference_spread(z_full, torch.zeros(1, 1, 1, dtype=torch.float64), (2,))
    kept = ((torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) / 1.5 * 1000).ceil() / 1000).log10()
    torch.testing.assert_close(sigma.flatten(), kept.std(unbiased=False).reshape(1))
