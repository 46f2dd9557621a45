"""A classifier the Explainer must leave alone: spectral normalisation in training mode (its power
iteration updates its vectors: refused, as BatchNorm in training mode is) and the user's hooks
on it (not copied into the explainer's copy of the classifier).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations
from torch.nn.utils import spectral_norm as old_spectral_norm

from ctc_plugin import ExplainerAttribution
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.inputs import TrainingModeError

from .helpers import NUM_CLASSES, SIZE, classifier_with_head, data, tiny_explainer


def _trained(explainer: Explainer) -> Explainer:
    explainer.trained_steps.fill_(1)
    explainer.image_size.copy_(torch.tensor([SIZE, SIZE]))
    return explainer.eval()


def _spectral_classifier(new_style: bool) -> nn.Module:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    conv = parametrizations.spectral_norm(conv) if new_style else old_spectral_norm(conv)
    return nn.Sequential(
        conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, NUM_CLASSES)
    )


@pytest.mark.parametrize("new_style", [True, False], ids=["parametrizations", "old-hook"])
def test_a_spectral_norm_classifier_in_training_mode_is_refused_and_not_changed(new_style):
    classifier = _spectral_classifier(new_style).train()
    before = {key: value.clone() for key, value in classifier.state_dict().items()}
    attribution = ExplainerAttribution(classifier, _trained(tiny_explainer()))
    try:
        attribution.attribute(data(2)[0])  # the predicted class: the classifier runs
        refused = False
    except TrainingModeError:
        refused = True
    changed = [k for k, v in classifier.state_dict().items() if not torch.equal(v, before[k])]
    assert refused and not changed, f"ran: {not refused}; changed: {changed}"


def test_the_classifier_copy_does_not_run_the_users_hooks():
    classifier = classifier_with_head()
    calls: list[int] = []
    classifier.features.register_forward_hook(lambda module, args, output: calls.append(1))
    explainer = Explainer(
        build_backbone("classifier", NUM_CLASSES, classifier=classifier, head="head", width=2),
        NUM_CLASSES,
    )
    with torch.no_grad():
        explainer(data(2)[0])
    assert calls == []  # the classifier itself did not run


def test_the_classifier_copy_keeps_torchs_own_reparametrisations() -> None:
    """The older spectral norm computes the weight in a forward pre-hook: the copy keeps it, and
    its features are the classifier's."""
    from ctc_plugin.explainer.classifier_backbone import class_map_encoder

    classifier = classifier_with_head()
    old_spectral_norm(classifier.features[0])
    with torch.no_grad():
        classifier.train()(data(2)[0])  # a few steps of its power iteration
    classifier.eval()
    calls: list[int] = []
    classifier.features[0].register_forward_hook(lambda module, args, output: calls.append(1))
    encoder = class_map_encoder(classifier, "head", NUM_CLASSES).eval()
    x = data(2)[0]
    with torch.no_grad():
        expected = classifier.features(x)
        calls.clear()
        torch.testing.assert_close(encoder.features(x), expected)
    assert calls == []  # the user's hook stayed on the classifier
    hooks = encoder.features[0]._forward_pre_hooks.values()
    assert any(type(hook).__name__ == "SpectralNorm" for hook in hooks)  # it computes the weight
