"""Integrative CAM called while a Zennit composite is registered on the model.

A composite's rules (``with composite.context(model)``, a Zennit attributor's ``with`` block)
replace the gradient of every module they sit on by their relevance rule. Integrative CAM weighs
its maps by the target's gradient at each stage, so inside such a block it returned, without a
word, maps that were neither its own nor the composite's (0.47 off on a RandomCNN under
``EpsilonGammaBox``). It is refused before the module carrying the rule runs; outside the block
the maps are those of the model.
"""

from __future__ import annotations

import pytest
import torch
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat

from ctc_plugin import CTCComposite, IntegrativeCAM
from ctc_plugin.testing import RandomCNN


def _hooks(model: torch.nn.Module) -> list[tuple[int, int]]:
    return [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in model.modules()]


@pytest.mark.parametrize(
    "make",
    [EpsilonPlusFlat, lambda: EpsilonGammaBox(low=-3.0, high=3.0), CTCComposite],
    ids=["EpsilonPlusFlat", "EpsilonGammaBox", "CTCComposite"],
)
@pytest.mark.parametrize("plain_function", [False, True], ids=["model", "function"])
def test_a_registered_composite_is_refused(make, plain_function):
    model = RandomCNN(seed=0).eval()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = IntegrativeCAM(model).attribute(images, 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cam = IntegrativeCAM((lambda x: model(x)) if plain_function else model)
    with make().context(model):
        hooks = _hooks(model)
        with pytest.raises(RuntimeError, match=r"Zennit composite.*outside"):
            cam.attribute(images, 1)
        assert _hooks(model) == hooks  # the composite's hooks stay, no other is left
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(cam.attribute(images, 1), expected)
