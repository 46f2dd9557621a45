"""`UnsupportedOperationError` says whether the refused tensor is the model's output (its pickling
is tested with every error of the package, in tests/robustness/test_errors_cross_processes.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC, UnsupportedOperationError


def _refusal(model: nn.Module) -> UnsupportedOperationError:
    x = torch.rand(1, 3, 6, 6)
    mask = torch.arange(4).repeat_interleave(9).reshape(1, 1, 6, 6)
    with pytest.raises(UnsupportedOperationError) as caught:
        CTC(model).attribute(x, target=0, feature_mask=mask)
    return caught.value


def _ends_in_softmax() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(108, 3), nn.Softmax(dim=1))


class _Sorts(nn.Module):
    """An operation CTC has no rule for, inside the model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(x, dim=1).values


def _unknown_inside() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(108, 3), _Sorts(), nn.Linear(3, 2))


def test_a_final_softmax_is_refused_at_the_output_and_an_unknown_operation_inside_is_not():
    at_the_end, inside = _refusal(_ends_in_softmax()), _refusal(_unknown_inside())
    assert at_the_end.at_output and at_the_end.operation.endswith("softmax")
    assert not inside.at_output and "sort" in inside.operation


def test_in_module_keeps_whether_it_is_the_output():
    error = UnsupportedOperationError("torch.softmax", "why", at_output=True)
    moved = error.in_module("head (Linear)")
    assert moved.at_output and moved.module == "head (Linear)"
    assert "in head (Linear)" in str(moved)


class _CosineOfAGateThenAHead(nn.Module):
    """``cos(sigmoid(conv(x)))`` (no rule: a gate of the full pass only), pooled, then a linear
    head written ``form``."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.conv, self.form = nn.Conv2d(3, 4, 3, padding=1), form
        self.weight, self.bias = nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cos(torch.sigmoid(self.conv(x))).mean((2, 3))
        if self.form == "linear":
            return nn.functional.linear(h, self.weight, self.bias)
        if self.form == "mm":
            return torch.mm(h, self.weight.t()) + self.bias
        if self.form == "@":
            return h @ self.weight.t()
        if self.form == "einsum":
            return torch.einsum("nd,kd->nk", h, self.weight) + self.bias
        return torch.tensordot(h, self.weight, dims=([1], [1]))


@pytest.mark.parametrize("form", ["linear", "mm", "@", "einsum", "tensordot"])
def test_a_matrix_product_of_a_gate_only_tensor_names_the_operation_that_made_it(form):
    """Found by the differential fuzzing (`tests/ctc/fuzz_models.py`, refusals of seeds 16, 31,
    54, 102): a head written ``h @ w`` (``mm``, ``einsum``) gave the gate-only tensor its own
    name, so the refusal blamed ``torch.mm in head`` and said the output came out of it, where
    ``F.linear`` named ``torch.cos``, the operation without a rule."""
    error = _refusal(_CosineOfAGateThenAHead(form))
    assert error.operation == "torch.cos", str(error)
