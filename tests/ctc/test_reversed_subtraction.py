"""A signal subtracted from a constant (``c - x``, ``torch.rsub``): the signal's sign flips.

``c - x`` is affine: ``-x`` is linear in the copies and ``c`` a bias shared among them. Held to
gradient x input (``"none"``, the network has no gate at all, so it is affine and gradient x
input is exact) and to completeness (``"proportional"``), both against plain torch; and
``1 - sigmoid(g)`` stays a gate tensor that may multiply the signal.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.speedups import DEFAULT, SPEC

SPEEDUPS = {"spec": SPEC, "default": DEFAULT}


class _ReversedSubtraction(nn.Module):
    def __init__(self, form: str) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.form = form
        self.first, self.head = nn.Linear(4, 3), nn.Linear(3, 2)
        self.gate = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, detach_gate: bool = False) -> torch.Tensor:
        h = self.first(x)
        if self.form == "python":
            h = 2.0 - h
        elif self.form == "rsub":
            h = torch.rsub(h, 0.5, alpha=3)  # 0.5 - 3 h
        else:  # a GRU-like complement of a gate
            s = torch.sigmoid(self.gate(x))
            h = h * (1 - (s.detach() if detach_gate else s))
        return self.head(h)


FORMS = ["python", "rsub", "complement of a gate"]


def _case(form):
    model = _ReversedSubtraction(form).double().eval()
    x = torch.tensor([[0.7, -1.1, 0.4, 2.0], [1.5, 0.2, -0.3, -0.8]], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 2]])
    return model, x, mask


def _scores(model, x, mask, mode, speedups):
    ctc = CTC(model, bias_sharing=mode)
    ctc._speedups = speedups
    _, scores = ctc.attribute(x, target=1, feature_mask=mask, return_feature_scores=True)
    return scores.scores


@pytest.mark.parametrize("speedups", SPEEDUPS.values(), ids=SPEEDUPS.keys())
@pytest.mark.parametrize("form", FORMS)
def test_none_is_gradient_times_input(form, speedups):
    model, x, mask = _case(form)
    leaf = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(leaf, detach_gate=True)[:, 1].sum(), leaf)
    contribution = gradient * x
    expected = torch.stack([contribution[:, mask[0] == k].sum(1) for k in range(3)], 1)
    actual = _scores(model, x, mask, "none", speedups)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("speedups", SPEEDUPS.values(), ids=SPEEDUPS.keys())
@pytest.mark.parametrize("form", FORMS)
def test_proportional_scores_add_up_to_the_logit(form, speedups):
    model, x, mask = _case(form)
    actual = _scores(model, x, mask, "proportional", speedups)
    torch.testing.assert_close(actual.sum(1), model(x)[:, 1], rtol=1e-12, atol=1e-12)
