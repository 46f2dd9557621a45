"""Explainer.fit on a classifier on which a Zennit composite is registered.

The masks are trained through the classifier's gradient. A composite's rules (``with
composite.context(classifier)``) replace that gradient by their relevance rule: inside such a
block the training took other steps (the explainer's weights 4e-5 off after two batches), without
a word. It is refused before anything runs, and the explainer is left as it was.
"""

from __future__ import annotations

import pytest
import torch
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat

from ctc_plugin import Explainer
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.testing import RandomCNN


@pytest.mark.parametrize(
    "make", [EpsilonPlusFlat, lambda: EpsilonGammaBox(low=-3.0, high=3.0)], ids=["EPF", "EGB"]
)
def test_a_registered_composite_is_refused(make):
    classifier = RandomCNN(seed=0).eval()
    generator = torch.Generator().manual_seed(0)
    data = [(torch.rand(4, 3, 16, 16, generator=generator), torch.tensor([0, 1, 2, 3]))]
    torch.manual_seed(0)
    explainer = Explainer(build_backbone("unet-small", 4, width=8, depth=2), 4)
    before = {k: v.clone() for k, v in explainer.state_dict().items()}
    with make().context(classifier):
        with pytest.raises(RuntimeError, match=r"Zennit composite.*outside"):
            explainer.fit(classifier, data, epochs=1, show_progress=False)
    assert all(torch.equal(v, before[k]) for k, v in explainer.state_dict().items())
    explainer.fit(classifier, data, epochs=1, show_progress=False)  # outside the block: trains
    assert any(not torch.equal(v, before[k]) for k, v in explainer.state_dict().items())
