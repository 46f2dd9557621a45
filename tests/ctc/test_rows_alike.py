"""``GatedPass.rows_alike``: rows of a constant alike up to rounding, value by value.

A constant with one row per copy must hold the same rows for the copies of an example (else its
values were taken out of torch: refused). Rounding is judged per value: a ``-1e9`` mask fill
somewhere, or one example of large values, must not make rows that differ by whole units
"alike" (a tolerance of the whole tensor's largest value did: an activation taken through
numpy then passed as a per-example bias, silently, where the same model without the mask was
refused). Rows an ulp apart, infinities and NaNs are alike.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.errors import UntracedOutputError
from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.rules import GatedPass
from ctc_plugin.ctc.sharing import make_sharing


def _pass() -> GatedPass:
    """Two examples of two features, no baseline: 2 x 3 copies (the gate copy first)."""
    layout = CopyLayout(examples=2, features=2, reference_full=False, baseline=False)
    return GatedPass(layout, make_sharing("proportional"))


def test_a_large_value_elsewhere_does_not_make_differing_rows_alike() -> None:
    """Example 0 holds a masked unit (-1e9); example 1's copies differ by 1.0 in another unit."""
    rows = torch.zeros(6, 2, dtype=torch.float32)
    rows[:, 1] = -1e9  # a masked unit, the same in every copy
    rows[:, 0] = torch.tensor([0.5, 0.5, 0.5, 2.0, 3.0, 4.0])  # example 1's copies differ
    assert not _pass().rows_alike(rows)


def test_one_examples_scale_does_not_loosen_anothers() -> None:
    """Example 0's values are about 1e5; example 1's copies differ by 0.5 in float32."""
    rows = torch.tensor([[1e5], [1e5], [1e5], [1.0], [1.5], [2.0]], dtype=torch.float32)
    assert not _pass().rows_alike(rows)


class _MaskedStatistic(nn.Module):
    """A convolution plus its per-channel mean taken through numpy, one channel masked out."""

    def __init__(self, fill: float) -> None:
        super().__init__()
        self.stem, self.head, self.fill = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2), fill
        self.register_buffer("off", torch.tensor([False, False, False, True]).view(1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        mean = torch.from_numpy(y.detach().numpy().mean(axis=(2, 3), keepdims=True))
        return self.head(F.relu(y + mean.masked_fill(self.off, self.fill)).mean((2, 3)))


def test_an_activation_taken_through_numpy_is_refused_whatever_the_mask_fill() -> None:
    """Refused with a zero fill (as today); with a -1e9 fill it must be refused as well."""
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(8) // 4).view(1, 1, 8, 1) * 2 + (torch.arange(8) // 4).view(1, 1, 1, 8)
    for fill in (0.0, -1e9):
        torch.manual_seed(0)
        model = _MaskedStatistic(fill).eval()
        with pytest.raises(UntracedOutputError, match="numpy"):
            CTC(model).attribute(x, 0, feature_mask=mask)


def _rows_alike(rows: torch.Tensor) -> bool:
    """``GatedPass.rows_alike`` of a constant of 2 examples x 3 copies (rows as given)."""
    assert rows.shape[0] == 6
    return _pass().rows_alike(rows)


def test_rows_alike_up_to_rounding_and_through_infinities_and_nans() -> None:
    """A learned query expanded to the batch and projected comes out of a matrix product with
    its rows an ulp apart (timm's AttentionPoolLatent): alike; so are rows of -inf (a
    mask) or NaN. Rows that differ by more than rounding are not, nor integers that differ."""
    row = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    rows = row.repeat(6, 1)
    assert _rows_alike(rows)
    rounded = rows.clone()
    rounded[1, 0] = torch.nextafter(row[0], torch.tensor(2.0, dtype=torch.float64))
    assert _rows_alike(rounded)
    masked = torch.tensor([1.0, float("-inf"), float("nan")], dtype=torch.float64).repeat(6, 1)
    assert _rows_alike(masked)
    apart = rows.clone()
    apart[4, 2] += 1e-6
    assert not _rows_alike(apart)
    integers = torch.arange(3).repeat(6, 1)
    assert _rows_alike(integers)
    integers[2, 0] = 5
    assert not _rows_alike(integers)


def test_an_infinity_is_alike_only_to_the_same_infinity() -> None:
    """A ``-inf`` in one copy and a finite value (or ``+inf``) in another differ: the bound of
    rounding, relative to the larger value, was infinite there, so any value matched it."""
    rows = torch.zeros(6, 3, dtype=torch.float64)
    rows[:, 2] = float("-inf")  # the same in every copy: alike
    assert _rows_alike(rows)
    for other in (0.0, -1e300, float("inf")):
        differing = rows.clone()
        differing[4, 0] = float("-inf")
        differing[3, 0] = other  # the gate copy of example 1 holds another value
        assert not _rows_alike(differing), other


class _TiledMask(nn.Module):
    """Attention with a float mask of ``-inf`` per example, tiled to the batch it is given.

    ``mask.repeat(n // 2, 1, 1)`` fits the model's own batch of two images; in the pass it
    gives the copies of one example the two examples' masks in turn, rows that differ between
    the copies (as a mask taken out of torch would): refused. The same mask filled with
    ``-1e9`` was refused; with ``-inf`` the copies took one mask silently, and the scores of
    the second image did not add up to its logit.
    """

    def __init__(self, fill: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Linear(3, 4), nn.Linear(4, 2)
        blocked = torch.zeros(2, 1, 5, dtype=torch.bool)
        blocked[0, 0, -2:], blocked[1, 0, 0] = True, True
        self.register_buffer("mask", torch.zeros(2, 1, 5).masked_fill(blocked, fill))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        mask = self.mask.repeat(x.shape[0] // 2, 1, 1)
        return self.head(F.scaled_dot_product_attention(h, h, h, attn_mask=mask).mean(1))


@pytest.mark.parametrize("fill", [-1e9, float("-inf")])
def test_a_mask_that_differs_between_the_copies_is_refused_with_infinities_too(fill) -> None:
    model = _TiledMask(fill).double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([0, 0, 1, 2, 2]).view(1, 5, 1).expand(1, 5, 3)
    for mode in ("proportional", "reference"):
        with pytest.raises(UntracedOutputError, match="differs between the copies"):
            CTC(model, bias_sharing=mode).attribute(x, 0, feature_mask=mask)


class _RowIndex(nn.Module):
    """A per-row offset built from the batch it is given: ``torch.arange(x.shape[0])``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        offset = torch.arange(x.shape[0], dtype=h.dtype).view(-1, 1, 1)
        return self.head((h + offset).mean(1))


@pytest.mark.parametrize("model", ["mask.repeat(n // 2, 1, 1)", "torch.arange(x.shape[0])"])
def test_a_constant_built_from_the_batch_is_told_to_depend_on_one_example(model) -> None:
    """The model built the differing rows itself, from the batch it was given: no round trip
    took place, and the message says what was seen (rows that depend on the batch layout)
    and what to do, without blaming a numpy round trip."""
    model = (_TiledMask(-1e9) if model.startswith("mask") else _RowIndex()).double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([0, 0, 1, 2, 2]).view(1, 5, 1).expand(1, 5, 3)
    with pytest.raises(UntracedOutputError) as error:
        CTC(model).attribute(x, 0, feature_mask=mask)
    reason = error.value.reason
    assert "a tensor that differs between the copies of one example" in reason
    assert reason.index("it depends on the batch layout, built from the batch size or the row") < (
        reason.index("taken out of torch and back")
    )
    assert "Build it from one example's shape and keep it broadcastable along dim 0" in reason
    assert "took the copies' values" not in reason  # nothing left torch


def test_a_round_trip_is_named_first_where_the_pass_saw_one() -> None:
    """An activation taken through numpy and added back: the round trip is named first."""

    def forward(t: torch.Tensor) -> torch.Tensor:
        return (t + torch.from_numpy(t.detach().numpy())).sum((1, 2))[:, None]

    x = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([0, 0, 1, 2, 2]).view(1, 5, 1).expand(1, 5, 3)
    with pytest.raises(UntracedOutputError) as error:
        CTC(forward).attribute(x, 0, feature_mask=mask)
    reason = error.value.reason
    assert reason.index("torch.Tensor.numpy took the copies' values out of torch and back") < (
        reason.index("it depends on the batch layout")
    )
