"""``ExplainerAttribution`` takes any forward function, as Captum's attributions do.

A lambda, a ``functools.partial`` or ``model.forward`` crashed with ``AttributeError`` (the
classifier check digested the function as a module); with ``check_classifier=False`` a model in
training mode behind a lambda ran, and its BatchNorm statistics changed. A target past a foreign
explainer's classes was blamed on "the model".
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from ctc_plugin import Explainer, ExplainerAttribution
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.inputs import TrainingModeError
from ctc_plugin.testing import CNNSpec, RandomCNN


def _explainer(classes: int = 4) -> Explainer:
    torch.manual_seed(0)
    return Explainer(build_backbone("unet-small", classes, width=4, depth=2), classes)


def _classifier() -> torch.nn.Module:
    return RandomCNN(CNNSpec(classes=4, batch_norm=True), seed=0).eval()


FORMS = {
    "the module": lambda model: model,
    "a lambda": lambda model: lambda x: model(x),
    "a partial": lambda model: functools.partial(model),
    "model.forward": lambda model: model.forward,
}


@pytest.mark.parametrize("check", [True, False])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_form_gives_the_modules_masks(form, check):
    model, explainer = _classifier(), _explainer()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an untrained explainer
        expected = ExplainerAttribution(model, explainer).attribute(images, target=None)
        masks = ExplainerAttribution(FORMS[form](model), explainer, check_classifier=check)
        torch.testing.assert_close(masks.attribute(images, target=None), expected)


@pytest.mark.parametrize("target", [None, 1])
@pytest.mark.parametrize("check", [True, False])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_classifier_in_training_mode_is_refused_before_it_changes(form, check, target):
    model = _classifier().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attribution = ExplainerAttribution(FORMS[form](model), _explainer(), check_classifier=check)
    with pytest.raises(TrainingModeError, match="training mode"):
        attribution.attribute(torch.rand(2, 3, 16, 16), target=target)
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_a_target_past_a_foreign_explainers_classes_names_the_mismatch():
    attribution = ExplainerAttribution(_classifier(), _explainer(classes=2))
    with pytest.raises(ValueError, match="class-count mismatch: the explainer has 2 classes"):
        attribution.attribute(torch.rand(2, 3, 16, 16), target=3)
