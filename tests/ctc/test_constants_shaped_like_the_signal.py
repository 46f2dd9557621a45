"""A tensor shaped or cast after the signal (``pos.expand_as(x)``, ``gate.type_as(x)``) is what
it was before: a constant stays a constant, a gate tensor a gate tensor.

``expand_as``, ``view_as``, ``reshape_as``, ``type_as`` and ``to(other)`` read only the shape,
dtype or device of their other tensor. A position embedding or class token expanded or cast
after the tokens is a bias shared among the copies (so ``"proportional"`` scores add up to the
logit), and timm's efficient channel attention, ``x * sigmoid(y).expand_as(x)``, multiplies by
a gate tensor.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.speedups import SPEC

from .exactness import assert_proportional_adds_up, assert_zennit_equals_captum

WIDTH = 8


class Tokens(nn.Module):
    """Patch tokens with a position embedding or class token shaped after the tokens."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.variant = variant
        self.patch = nn.Conv2d(3, WIDTH, 2, stride=2)
        self.token = nn.Parameter(torch.randn(1, 1, WIDTH))
        self.position = nn.Parameter(torch.randn(1, 16, WIDTH))
        self.fc, self.head = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        rows = self.position.expand(t.shape[0], -1, -1)
        if self.variant == "expand_as":
            t = t + self.position.expand_as(t)
        elif self.variant == "type_as":
            t = t + rows.type_as(t)
        elif self.variant == "to":
            t = t + rows.to(t)
        elif self.variant == "view_as":
            t = t + rows.reshape(t.shape[0], -1).view_as(t)
        elif self.variant == "reshape_as":
            t = t + rows.reshape(t.shape[0], -1).reshape_as(t)
        elif self.variant == "class_token_type_as":
            t = torch.cat([self.token.expand(t.shape[0], -1, -1).type_as(t), t], 1)
        return self.head(F.relu(self.fc(t)).mean(1))


class EfficientChannelAttention(nn.Module):
    """timm's EcaModule after a stem: ``x * sigmoid(conv1d(mean(x))).expand_as(x)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, WIDTH, 3, padding=1)
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.head = nn.Linear(WIDTH, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = torch.sigmoid(self.conv(y)).view(x.shape[0], -1, 1, 1)
        return self.head((x * y.expand_as(x)).mean((2, 3)))


def _grid(size: int = 8, cells: int = 3) -> torch.Tensor:
    rows = torch.arange(size) * cells // size
    return (rows.view(1, 1, -1, 1) * cells + rows.view(1, 1, 1, -1)) + 1


def _case(model: nn.Module) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = model.double().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=generator)
    return model, x


MODELS = {
    **{f"position {v}": (lambda v=v: Tokens(v)) for v in ("expand_as", "type_as", "to")},
    **{f"position {v}": (lambda v=v: Tokens(v)) for v in ("view_as", "reshape_as")},
    "class token type_as": lambda: Tokens("class_token_type_as"),
    "efficient channel attention": EfficientChannelAttention,
}


@pytest.mark.parametrize("name", MODELS)
def test_proportional_scores_add_up_to_the_logit(name: str) -> None:
    model, x = _case(MODELS[name]())
    assert_proportional_adds_up(model, x, _grid(), 1, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
@pytest.mark.parametrize("name", ["position expand_as", "efficient channel attention"])
def test_the_spec_and_the_zennit_attributor_agree(name: str, mode: str) -> None:
    model, x = _case(MODELS[name]())
    expected = CTC(model, bias_sharing=mode).attribute(x, 1, feature_mask=_grid())
    spec = CTC(model, bias_sharing=mode)
    spec._speedups = SPEC
    torch.testing.assert_close(
        spec.attribute(x, 1, feature_mask=_grid()), expected, rtol=1e-9, atol=1e-12
    )
    assert_zennit_equals_captum(model, x, _grid(), 1, mode)
