"""An explainer built from the classifier's own modules, not from a copy of them.

``create_feature_extractor(classifier, ...)`` or ``classifier.stem`` in the explainer shares the
classifier's modules: ``Explainer.fit`` put the explainer in training mode, which put the shared
BatchNorm in training mode too, so the frozen classifier's running statistics changed and its
class scores in the loss came from batch statistics, without a word.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ctc_plugin import Explainer

from .helpers import FAST, tiny_classifier


def _classifier() -> nn.Module:
    """Conv, BatchNorm, ReLU, pooling, dropout and a linear head of four classes, eval mode."""
    return tiny_classifier(num_classes=4).eval()


class _Backbone(nn.Module):
    def __init__(self, stem: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.head = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x))


def _loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.rand(4, 3, 32, 32, generator=generator),
            torch.randint(0, 4, (4,), generator=generator),
        )
        for _ in range(2)
    ]


def _fit(explainer: Explainer, classifier: nn.Module) -> None:
    explainer.fit(classifier, _loader(), epochs=1, **FAST)


def test_an_explainer_that_shares_the_classifier_s_modules_is_refused_before_training():
    classifier = _classifier()
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    explainer = Explainer(_Backbone(classifier[:3]), 4)
    explainer_before = copy.deepcopy(explainer.state_dict())
    with pytest.raises(ValueError, match=r"shares.*classifier.*copy\.deepcopy") as caught:
        _fit(explainer, classifier)
    assert "its backbone.stem.1 is the classifier's 1" in str(caught.value)  # the BatchNorm
    for key, value in classifier.state_dict().items():
        assert torch.equal(value, before[key]), key
    for key, value in explainer.state_dict().items():
        assert torch.equal(value, explainer_before[key]), key


def test_a_copy_of_the_classifier_s_modules_trains_and_leaves_the_classifier_as_it_was():
    classifier = _classifier()
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    _fit(Explainer(_Backbone(copy.deepcopy(classifier[:3])), 4), classifier)
    for key, value in classifier.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_shared_parameter_alone_is_refused_too():
    """Tied weights: no module in common, one parameter (frozen for the classifier, so it would
    have been left untrained in the explainer)."""
    classifier = _classifier()
    stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    stem[0].weight = classifier[0].weight
    with pytest.raises(ValueError, match=r"shares a parameter .*is the classifier's 0.weight"):
        _fit(Explainer(_Backbone(stem), 4), classifier)


def test_a_shared_constant_buffer_is_no_sharing_that_matters():
    """Two normalisations registering one module-level constant: training changes neither."""
    mean = torch.full((1, 3, 1, 1), 0.5)

    class Shift(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", mean)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x - self.mean

    classifier = nn.Sequential(Shift(), *_classifier())
    stem = nn.Sequential(Shift(), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    _fit(Explainer(_Backbone(stem), 4), classifier.eval())


def test_a_student_that_shares_the_classifier_s_modules_is_refused_before_distilling():
    """distil_class_maps trained a student built on the classifier's own stem: the classifier's
    convolution and BatchNorm statistics changed (it is not frozen there at all)."""
    from ctc_plugin.explainer.student import distil_class_maps

    classifier = _classifier()
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    student = nn.Sequential(classifier[:3], nn.Conv2d(4, 4, 1))
    images = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match=r"the student shares .* with the classifier"):
        distil_class_maps(student, classifier, "6", images, epochs=1, batch_size=8)
    for key, value in classifier.state_dict().items():
        assert torch.equal(value, before[key]), key
