"""Edge cases of the rules for written-out statistics, clamps, maxima, gate-only scores and
sequence-first tokens, each pinned by one small model.

(Products of two signals, squares in place, and ``clamp`` with one bound being no gate tensor
are pinned in ``test_gates_written_out.py``.) ``torch.var_mean`` over dim 0 is
refused also for one image; ``torch.max(a, b)`` with ``b`` given by position is
``torch.maximum``; a view of gate-only scores that drops the copies' rows and an elementwise
operation on gate-only scores whose copies were moved off dim 0 are refused. With the copies
moved to dim 1 (sequence-first tokens), an operand of lower rank holding the copies along its
dim 0 and a constant shaped ``(L, 1, D)`` broadcast as torch aligns them, and the result of a
linear layer is contiguous as torch returns it. A PReLU slope that depends on the input and a
statistic over dim 0 of several images are refused; ``abs_``, ``sigmoid_`` (read through the
tensor they wrote) and GELU written with ``torch.erfc`` are exact gates.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .exactness import (
    OperationAfterConv,
    assert_equals_the_spec,
    assert_proportional_adds_up,
    assert_refused,
    random_case,
)

C = 4


def test_var_mean_over_dim_zero_is_refused_for_one_image() -> None:
    model = (
        OperationAfterConv(lambda s: s - torch.var_mean(s, dim=(0, 1), keepdim=True)[1], C)
        .double()
        .eval()
    )
    assert_refused(model, r"torch\.var_mean .*over dim 0")


class _MaxWithTensor(nn.Module):
    """``torch.max``/``torch.min`` of the signal and a constant tensor, given by position."""

    def __init__(self, largest: bool) -> None:
        super().__init__()
        self.largest = largest
        self.stem, self.head = nn.Conv2d(3, C, 3, padding=1), nn.Linear(C, 2)
        self.register_buffer("bound", torch.linspace(-0.3, 0.3, C).view(C, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.max(y, self.bound) if self.largest else torch.min(y, self.bound)
        return self.head(y.mean((2, 3)))


@pytest.mark.parametrize("largest", [True, False], ids=["max", "min"])
def test_max_of_the_signal_and_a_tensor_by_position_is_the_elementwise_maximum(
    largest: bool,
) -> None:
    model, x, mask = random_case(lambda: _MaxWithTensor(largest))
    scores = assert_proportional_adds_up(model, x, mask, 1, rtol=1e-9, atol=1e-9)
    assert_equals_the_spec(model, x, mask, 1, scores, rtol=1e-9, atol=1e-12)


class _GateOnlyScores(nn.Module):
    """Attention scores ``t @ t^T`` (gate-only), then ``operation`` of them, then attention."""

    def __init__(self, operation) -> None:
        super().__init__()
        self.operation = operation
        self.patch, self.head = nn.Conv2d(3, C, 2, stride=2), nn.Linear(C, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        a = self.operation(t @ t.transpose(1, 2) / C)
        return self.head((a.softmax(-1) @ t).mean(1))


def _scores_case(operation):
    model = _GateOnlyScores(operation).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return model, x, (torch.arange(8) // 4).view(1, 1, 1, 8).expand(1, 1, 8, 8)


def test_gate_only_scores_off_the_copies_rows_are_refused() -> None:
    model, x, mask = _scores_case(
        lambda a: a.diagonal(0, 0, 1).unsqueeze(0).expand(a.shape[0], -1, -1)
    )
    message = r"diagonal .*view of .*does not keep the copies along dim 0"
    assert_refused(model, message, x=x, mask=mask)


def test_scores_scaled_with_the_copies_moved_off_dim_0_are_read_as_the_product() -> None:
    """``t @ t^T`` stands for a product of two signals: where a rule refuses the gate-only
    reading (an operation of it with the copies moved off dim 0), its copies are computed."""
    model, x, mask = _scores_case(lambda a: (a.transpose(0, 1) * 2.0).transpose(0, 1))
    scores = assert_proportional_adds_up(model, x, mask, 1, rtol=1e-10, atol=1e-10)
    assert_equals_the_spec(model, x, mask, 1, scores, rtol=1e-9, atol=1e-12)


class _SequenceFirst(nn.Module):
    """Tokens ``(L, N, D)`` (the copies along dim 1), then ``kind``'s operation there."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.embed, self.head = nn.Conv2d(3, C, 2, 2), nn.Linear(C, 2)
        self.inner = nn.Linear(C, 2 * C)
        self.pos = nn.Parameter(torch.randn(16, 1, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).permute(2, 0, 1)  # (L, N, D)
        if self.kind == "plus its mean over the tokens":
            tokens = tokens + tokens.mean(0)  # (L, N, D) + (N, D)
        elif self.kind == "plus a (L, 1, D) constant":
            tokens = tokens + self.pos
        elif self.kind == "linear, then view":
            hidden = self.inner(tokens)  # a view needs it contiguous, as torch returns it
            hidden = hidden.view(hidden.shape[0], -1).view(hidden.shape)
            tokens = hidden[..., :C]
        return self.head(tokens.mean(0))


@pytest.mark.parametrize(
    "kind", ["plus its mean over the tokens", "plus a (L, 1, D) constant", "linear, then view"]
)
def test_sequence_first_operations_add_up_and_equal_the_spec(kind: str) -> None:
    model, x, mask = random_case(lambda: _SequenceFirst(kind))
    scores = assert_proportional_adds_up(model, x, mask, 1, rtol=1e-9, atol=1e-9)
    assert_equals_the_spec(model, x, mask, 1, scores, rtol=1e-9, atol=1e-12)


def test_prelu_with_an_input_dependent_slope_is_refused() -> None:
    model = OperationAfterConv(lambda s: F.prelu(s, s.mean((1, 2, 3))), C).double().eval()
    assert_refused(model, r"prelu .*slope depends on the input")


def test_a_statistic_over_dim_zero_of_several_images_is_refused() -> None:
    model = OperationAfterConv(lambda s: s / s.std(0, keepdim=True), C).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert_refused(model, r"torch\.Tensor\.std .*over dim 0", x=x)


def _abs_in_place(s: torch.Tensor) -> torch.Tensor:
    s.abs_()  # the result is read through s
    return s


def _sigmoid_in_place(s: torch.Tensor) -> torch.Tensor:
    gate = s.clone()
    gate.sigmoid_()  # the result is read through gate
    return s * gate


def _gelu_by_erfc(s: torch.Tensor) -> torch.Tensor:
    return 0.5 * s * torch.erfc(-s / 2**0.5)


@pytest.mark.parametrize(
    "operation", [_abs_in_place, _sigmoid_in_place, _gelu_by_erfc], ids=["abs_", "sigmoid_", "erfc"]
)
def test_in_place_gates_and_erfc_add_up_and_equal_the_spec(operation) -> None:
    model, x, mask = random_case(lambda: OperationAfterConv(operation, C))
    scores = assert_proportional_adds_up(model, x, mask, 1, rtol=1e-9, atol=1e-9)
    assert_equals_the_spec(model, x, mask, 1, scores, rtol=1e-9, atol=1e-12)
