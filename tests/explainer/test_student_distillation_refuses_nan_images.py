"""The distillations refuse NaN images instead of returning a NaN loss history and NaN weights."""

from __future__ import annotations

import pytest
import torch

from ctc_plugin import Explainer
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.student import ClassMapStudent, distil_class_maps
from ctc_plugin.explainer.student_unet import distil_student_unet
from tests.explainer.helpers import NUM_CLASSES, classifier_with_head, tiny_explainer


def _images_with_nan():
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images[9, 1, 3, 4] = float("nan")
    return images


def test_distil_class_maps_refuses_nan_images():
    student = ClassMapStudent(NUM_CLASSES, width=4)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(ValueError, match=r"1 NaN or infinite value \(in example 9\)"):
        distil_class_maps(student, classifier_with_head(), "head", _images_with_nan(),
                          epochs=1, batch_size=8)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_distil_student_unet_refuses_nan_images():
    explainer = Explainer(build_backbone("student-unet", NUM_CLASSES, width=4), NUM_CLASSES)
    with pytest.raises(ValueError, match=r"1 NaN or infinite value \(in example 9\)"):
        distil_student_unet(explainer, classifier_with_head(), "head", tiny_explainer(),
                            _images_with_nan(), epochs=1, batch_size=8)  # fmt: skip
    assert not explainer.is_trained
