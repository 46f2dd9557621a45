"""A refusal inside a call that CTC writes out names the module with its path in the model.

``torch.addcmul``, ``torch.baddbmm`` (and ``addbmm``, ``addmm``, ``addmv``), ``F.glu`` and
``nn.MultiheadAttention`` are written out in operations of the table, each routed by its own
rule (``ctc_plugin.ctc.interception.decomposed``). A step refused there is refused naming the
call and the step, and the module the way every other refusal names it: ``blocks.0 (Block)``,
``blocks.0.attn (MultiheadAttention)``, ``the model (Model)``. Before, the refusals of the
steps of ``addcmul`` and of ``nn.MultiheadAttention`` named only the module's type (``a Block
module``): the mode the steps ran in did not know the model.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.errors import UntracedOutputError

from .exactness import assert_refused

D, TOKENS = 8, 16
MODES = ("proportional", "reference")


def _untraced(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values taken out of torch and back: a constant that differs between copies."""
    return torch.from_numpy(t.detach().numpy())


class _Block(nn.Module):
    """``step`` of the tokens, given the block (its attention, parameters and memory)."""

    def __init__(self, step: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.step = step
        self.attn = nn.MultiheadAttention(D, 2, batch_first=True)
        self.w = nn.Parameter(torch.randn(D))
        self.weight = nn.Parameter(torch.randn(D, D))
        self.sized_for_two = nn.Parameter(torch.randn(2, TOKENS, D))  # a batch fixed to 2

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.step(self, tokens)


class _Model(nn.Module):
    """Patch tokens, one `_Block` in ``blocks`` (or ``step`` in the model's own forward)."""

    def __init__(self, step: Callable, nested: bool = True) -> None:
        super().__init__()
        self.nested, self.step = nested, step
        self.stem = nn.Conv2d(3, D, 2, stride=2)
        self.blocks = nn.ModuleList([_Block(step)])
        self.w, self.sized_for_two = self.blocks[0].w, self.blocks[0].sized_for_two
        self.head = nn.Linear(D, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = F.gelu(self.stem(x)).flatten(2).transpose(1, 2)  # (B, T, D)
        h = self.blocks[0](tokens) if self.nested else self.step(self, tokens)
        return self.head(h.mean(1))


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 8 x 8 images and a 2 x 2 grid of features."""
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows = torch.arange(8) // 4
    return x, (rows.view(1, 1, -1, 1) * 2 + rows.view(1, 1, 1, -1)).expand(2, 1, 8, 8)


def _model(step: Callable, nested: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return _Model(step, nested).double().eval()


#: name: (the step, whether it runs in blocks.0, the headline's start after "through").
REFUSED = {
    "addcmul in blocks.0": (
        lambda m, t: torch.addcmul(m.sized_for_two, t, m.w),
        True,
        r"torch\.addcmul \(written out: torch\.add\) in blocks\.0 \(_Block\): a constant of "
        r"shape \(2, 16, 8\)",
    ),
    "addcmul in the model": (
        lambda m, t: torch.addcmul(m.sized_for_two, t, m.w),
        False,
        r"torch\.addcmul \(written out: torch\.add\) in the model \(_Model\): a constant",
    ),
    "addbmm in blocks.0": (
        lambda m, t: torch.addbmm(m.w[:1], t, m.weight.expand(t.shape[0], D, D)).expand_as(t),
        True,
        r"torch\.addbmm \(written out: torch\.sum\) in blocks\.0 \(_Block\): .*dim 0",
    ),
}


@pytest.mark.parametrize("kind", REFUSED)
def test_a_refused_step_names_the_call_the_step_and_the_module_path(kind: str) -> None:
    step, nested, message = REFUSED[kind]
    x, mask = _case()
    error = assert_refused(_model(step, nested), "through " + message, x=x, mask=mask, modes=MODES)
    assert error.module == ("blocks.0 (_Block)" if nested else "the model (_Model)")


#: name: (the step, the module the refusal names).
UNTRACED = {
    "addcmul of a constant taken out of torch": (
        lambda m, t: torch.addcmul(t, _untraced(t), m.w),
        "blocks.0 (_Block)",
    ),
    "nn.MultiheadAttention with keys taken out of torch": (
        lambda m, t: m.attn(t, _untraced(t), _untraced(t), need_weights=False)[0],
        "blocks.0.attn (MultiheadAttention)",
    ),
}


@pytest.mark.parametrize("kind", UNTRACED)
def test_an_untraced_constant_met_by_a_step_names_the_module_path(kind: str) -> None:
    step, module = UNTRACED[kind]
    x, mask = _case()
    model = _model(step)
    for mode in MODES:
        with pytest.raises(UntracedOutputError) as error:
            CTC(model, bias_sharing=mode).attribute(x, 0, feature_mask=mask)
        assert error.value.module == module
        assert f"(in {module})" in str(error.value)
