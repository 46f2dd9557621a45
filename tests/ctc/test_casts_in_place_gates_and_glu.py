"""``Tensor.type``, in-place squashing activations and ``F.glu`` are exact in a CTC pass.

CLIP's LayerNorm subclass computes in float32 through ``x.type(torch.float32)``; timm's
squeeze-excitation gates with ``sigmoid(x, inplace=True)`` (``x.sigmoid_()``); a gated linear
unit (``F.glu``, ``nn.GLU``) multiplies one half by the sigmoid of the other. ``"proportional"``
scores add up to the logit and equal the spec's, ``"none"`` is gradient x input of the network
with its gates detached, and the Zennit attributor equals the Captum class. A GLU split along
the copies, a cast to integers and a product of two gate tensors that reaches the output are
refused with a message that says what is wrong.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .exactness import (
    OperationAfterConv,
    assert_equals_the_spec,
    assert_none_is_gradient_x_input,
    assert_proportional_adds_up,
    assert_refused,
    assert_zennit_equals_captum,
    held_fixed,
    random_case,
)

C = 8


class ClipLayerNorm(nn.LayerNorm):
    """OpenAI CLIP's LayerNorm: computed in ``dtype`` (float32 there), cast back."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__(C)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig_type = x.dtype
        ret = super().forward(x.type(self.dtype))
        return ret.type(orig_type)


class Block(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.norm = ClipLayerNorm(torch.float32 if "float32" in kind else torch.float64)
        self.wide, self.fc = nn.Conv2d(C, 2 * C, 1), nn.Linear(C, 2 * C)
        self.glu = nn.GLU(dim=1)
        self.frozen = False

    def held(self, gate: torch.Tensor) -> torch.Tensor:
        return gate.detach() if self.frozen else gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = self.kind
        if kind.startswith("CLIP LayerNorm"):
            t = x.permute(0, 2, 3, 1)
            if self.frozen:  # the statistics held fixed
                n = self.norm
                var = self.held(t.var(-1, correction=0, keepdim=True))
                y = (t - t.mean(-1, keepdim=True)) / torch.sqrt(var + n.eps) * n.weight + n.bias
            else:
                y = self.norm(t)
            return x + y.permute(0, 3, 1, 2)
        if kind == "sigmoid_":  # timm: sigmoid(x, inplace=True)
            return x * self.held(x.mean((2, 3), keepdim=True).sigmoid_())
        if kind == "torch.sigmoid_":
            return x * self.held(torch.sigmoid_(x.mean((2, 3), keepdim=True) - 0.5))
        if kind == "tanh_":
            return x * self.held(x.mean((2, 3), keepdim=True).tanh_())
        if kind == "hardtanh_":
            return x * self.held(F.hardtanh_(x.mean((2, 3), keepdim=True), -0.5, 0.5))
        if kind == "F.glu":
            a, b = self.wide(x).chunk(2, 1)
            return F.glu(self.wide(x), dim=1) if not self.frozen else a * self.held(b.sigmoid())
        if kind == "nn.GLU":
            a, b = self.wide(x).chunk(2, 1)
            return self.glu(self.wide(x)) if not self.frozen else a * self.held(b.sigmoid())
        if kind == "F.glu channels last":
            t = self.fc(x.permute(0, 2, 3, 1))
            a, b = t.chunk(2, -1)
            y = F.glu(t) if not self.frozen else a * self.held(b.sigmoid())
            return y.permute(0, 3, 1, 2)
        raise AssertionError(kind)


KINDS = [
    "CLIP LayerNorm",
    "CLIP LayerNorm float32",
    "sigmoid_",
    "torch.sigmoid_",
    "tanh_",
    "hardtanh_",
    "F.glu",
    "nn.GLU",
    "F.glu channels last",
]


class Net(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(3, C, 3, padding=1), block, nn.Linear(C, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.block(self.stem(x))).mean((2, 3)))


def _case(kind: str) -> tuple[Net, torch.Tensor, torch.Tensor]:
    model, x, mask = random_case(lambda: Net(Block(kind)))
    if "float32" in kind:
        model.block.norm.float()  # CLIP keeps its LayerNorms in float32
    return model, x, mask


def _tolerance(kind: str) -> float:
    return 1e-5 if "float32" in kind else 1e-10  # CLIP's LayerNorm rounds to float32


@pytest.mark.parametrize("kind", KINDS)
def test_proportional_scores_add_up_and_equal_the_spec(kind: str) -> None:
    model, x, mask = _case(kind)
    scores = assert_proportional_adds_up(model, x, mask, 1, relative=_tolerance(kind))
    assert_equals_the_spec(model, x, mask, 1, scores, relative=_tolerance(kind))


@pytest.mark.parametrize("kind", [k for k in KINDS if "float32" not in k])
def test_none_is_gradient_x_input_with_the_gates_held_fixed(kind: str) -> None:
    model, x, mask = _case(kind)
    linearised = held_fixed(model, model.block)
    assert_none_is_gradient_x_input(model, x, mask, 1, linearised, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["proportional", "none"])
@pytest.mark.parametrize("kind", ["CLIP LayerNorm", "sigmoid_", "F.glu"])
def test_the_zennit_attributor_equals_the_captum_class(kind: str, mode: str) -> None:
    model, x, mask = _case(kind)
    assert_zennit_equals_captum(model, x, mask, 1, mode)


@pytest.mark.parametrize(
    "operation, message",
    [
        (lambda s: F.glu(s, 0), r"glu in the model \(OperationAfterConv\): it splits dim 0"),
        (lambda s: s.type(torch.int32), r"torch\.Tensor\.type .*rounds"),
        (
            lambda s: torch.tanh(s) * torch.tanh(s),
            r"torch\.Tensor\.mul in the model \(OperationAfterConv\): .*product of two gate "
            r"tensors such as tanh\(h\) \* tanh\(h\)"
            r".*not linear in the input",
        ),
    ],
)
def test_refusals_say_what_is_wrong(operation, message: str) -> None:
    error = assert_refused(OperationAfterConv(operation, C).double().eval(), message)
    assert "softmax (for example" not in str(error)  # no softmax to leave out
