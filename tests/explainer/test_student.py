"""The distilled student of a classifier's class maps and the student-gated Explainer."""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.classifier_backbone import class_map_encoder
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.explainer.student import ClassMapStudent, distil_class_maps

from .helpers import NUM_CLASSES, SIZE, classifier_with_head


def test_student_maps_have_the_classes_at_the_output_stride():
    student = ClassMapStudent(NUM_CLASSES, width=4, stages=2)
    assert student(torch.rand(2, 3, SIZE, SIZE)).shape == (2, NUM_CLASSES, SIZE // 4, SIZE // 4)
    with pytest.raises(ValueError, match="width and stages must be >= 1"):
        ClassMapStudent(NUM_CLASSES, width=0)


def distilled(seed: int) -> ClassMapStudent:
    torch.manual_seed(0)
    student = ClassMapStudent(NUM_CLASSES, width=4, stages=1)
    images = torch.rand(64, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    distil_class_maps(
        student, classifier_with_head(), "head", images, epochs=2, batch_size=16, seed=seed
    )
    return student


def test_distillation_reproduces_the_class_maps_and_leaves_the_classifier_alone():
    model = classifier_with_head()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    student = ClassMapStudent(NUM_CLASSES, width=8, stages=1)
    images = torch.rand(64, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    history = distil_class_maps(student, model, "head", images, epochs=30, batch_size=16, lr=1e-2)
    assert len(history) == 30 and history[-1] < 0.1 * history[0]
    assert not student.training
    teacher = class_map_encoder(model, "head", NUM_CLASSES).eval()
    test = torch.rand(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        error = (student(test) - teacher(test)).pow(2).mean() / teacher(test).var()
    assert error < 0.2  # measured 0.035; predicting the mean map scores 1.0
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_distillation_is_deterministic_with_a_seed():
    first, again, other = distilled(seed=0), distilled(seed=0), distilled(seed=1)
    for key, value in first.state_dict().items():
        torch.testing.assert_close(value, again.state_dict()[key], rtol=0, atol=0)
    assert not torch.equal(first.classes.weight, other.classes.weight)  # the seed orders batches


def test_distillation_errors_name_the_problem():
    model = classifier_with_head()
    images = torch.rand(8, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        distil_class_maps(ClassMapStudent(NUM_CLASSES), model, "head", images, epochs=0)
    with pytest.raises(ValueError, match="at least one batch"):
        distil_class_maps(ClassMapStudent(NUM_CLASSES), model, "head", images, batch_size=16)
    with pytest.raises(ValueError, match="the explainer has 5"):
        distil_class_maps(ClassMapStudent(5), model, "head", images, batch_size=4)


def test_student_gated_explainer_saves_loads_without_the_classifier(tmp_path):
    torch.manual_seed(0)
    explainer = Explainer(
        build_backbone(
            "student-gated", NUM_CLASSES, width=2, depth=2, mask_scale=0.5, student_width=4
        ),
        NUM_CLASSES,
    ).eval()
    assert explainer.config()["student_width"] == 4 and explainer.config()["mask_scale"] == 0.5
    loaded = Explainer.load(explainer.save(tmp_path / "student.pt"))
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), explainer(x))
        target = torch.tensor([2, 1])
        expected = explainer(x)[[0, 1], target][:, None]
        torch.testing.assert_close(explainer.target_logits(x, target), expected)
    with pytest.raises(ValueError, match="'unet-small' does not take student_width="):
        Explainer(build_backbone("unet-small", NUM_CLASSES, student_width=4), NUM_CLASSES)
    with pytest.raises(ValueError, match="'student-gated' does not take classifier=, head="):
        Explainer(
            build_backbone(
                "student-gated", NUM_CLASSES, classifier=classifier_with_head(), head="head"
            ),
            NUM_CLASSES,
        )
