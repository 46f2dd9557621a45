"""A refused IntegrativeGradCAM construction leaves the model alone and reports one error."""

from __future__ import annotations

import gc
import sys

import pytest

from ctc_plugin.adapters.gradcam import IntegrativeGradCAM
from tests.cam.cam_models import tiny_cnn


@pytest.mark.parametrize(
    "arguments",
    [{"phi": "bogus"}, {"layer_weights": "max"}, {"reshape_transform": 3}, {"target_layers": [3]}],
)
def test_a_refused_construction_leaves_the_model_in_training_mode(arguments):
    model = tiny_cnn().train()
    with pytest.raises((TypeError, ValueError)):
        IntegrativeGradCAM(model, **arguments)
    assert model.training and all(m.training for m in model.modules())


@pytest.mark.parametrize("keyword", ["use_cuda", "target_layer"])
def test_an_unknown_keyword_raises_only_the_type_error(keyword, monkeypatch):
    """BaseCAM.__del__ used to add an AttributeError ('no attribute activations_and_grads')."""
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(TypeError, match=keyword):
        IntegrativeGradCAM(tiny_cnn(), **{keyword: True})
    gc.collect()
    assert [str(u.exc_value) for u in unraisable] == []


def test_empty_target_layers_are_named_as_pytorch_grad_cam_names_them():
    with pytest.raises(ValueError, match="^target_layers is empty; pass None"):
        IntegrativeGradCAM(tiny_cnn(), target_layers=[])
