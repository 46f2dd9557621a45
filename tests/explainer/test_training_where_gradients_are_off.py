"""Training the Explainer and its students where the caller turned gradients off.

``fit`` and the distillations called inside ``torch.no_grad()`` or ``torch.inference_mode()``
(a notebook cell left in such a block, serving code) failed in ``backward`` with autograd's
"element 0 of tensors does not require grad", which says neither what was wrong nor what to do.
They train with gradients on for the call, as Lightning's loop does; weights that autograd
cannot use (inference tensors) are refused up front. The distillations also refuse images of
another channel count and epochs that are no integers, as ``fit`` does.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from ctc_plugin import Explainer
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.student import ClassMapStudent, distil_class_maps
from ctc_plugin.explainer.student_unet import distil_student_unet
from tests.explainer.helpers import (
    FAST,
    NUM_CLASSES,
    classifier_with_head,
    tiny_classifier,
    tiny_explainer,
    tuple_loader,
)

GRADIENTS_OFF = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


def _images(channels: int = 3) -> torch.Tensor:
    return torch.rand(16, channels, 32, 32, generator=torch.Generator().manual_seed(0))


def _student_explainer() -> Explainer:
    torch.manual_seed(0)
    return Explainer(build_backbone("student-unet", NUM_CLASSES, width=4), NUM_CLASSES)


def _fit(context) -> Explainer:
    classifier = tiny_classifier().eval()
    explainer = tiny_explainer()
    with context():
        explainer.fit(classifier, tuple_loader(), epochs=1, seed=0, **FAST)
        modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
    assert modes == (context is contextlib.nullcontext, context is torch.inference_mode)
    return explainer


@pytest.mark.parametrize("off", GRADIENTS_OFF)
def test_fit_trains_where_gradients_are_off_as_it_does_elsewhere(off):
    expected = _fit(contextlib.nullcontext)
    got = _fit(GRADIENTS_OFF[off])
    assert got.is_trained
    for name, value in expected.state_dict().items():
        assert torch.equal(got.state_dict()[name], value), name


@pytest.mark.parametrize("off", GRADIENTS_OFF)
def test_the_distillations_train_where_gradients_are_off(off):
    for distil in ("class maps", "student U-Net"):
        histories = []
        for context in (contextlib.nullcontext, GRADIENTS_OFF[off]):
            torch.manual_seed(0)  # the networks are built outside, the data too
            student, network = ClassMapStudent(NUM_CLASSES, width=4), _student_explainer()
            classifier, teacher, images = classifier_with_head(), tiny_explainer(), _images()
            with context():
                if distil == "class maps":
                    history = distil_class_maps(
                        student, classifier, "head", images, epochs=2, batch_size=8
                    )
                else:
                    history = distil_student_unet(
                        network, classifier, "head", teacher, images, epochs=2, batch_size=8
                    )
            histories.append(history)
        assert histories[0] == histories[1], distil


@pytest.mark.parametrize("made_there", ["classifier", "explainer"])
def test_fit_refuses_weights_made_under_inference_mode_before_training(made_there):
    classifier, explainer = tiny_classifier().eval(), tiny_explainer()
    if made_there == "classifier":
        with torch.inference_mode():
            classifier = tiny_classifier().eval()
    else:
        with torch.inference_mode():
            explainer = tiny_explainer()
    with pytest.raises(ValueError, match=r"inference tensors .*outside inference mode"):
        explainer.fit(classifier, tuple_loader(), epochs=1, **FAST)
    assert not explainer.is_trained


def test_the_distillations_refuse_a_student_made_under_inference_mode():
    with torch.inference_mode():
        student = ClassMapStudent(NUM_CLASSES, width=4)
        network = _student_explainer()
    with pytest.raises(ValueError, match=r"distil_class_maps .*inference tensors"):
        distil_class_maps(student, classifier_with_head(), "head", _images(), batch_size=8)
    with pytest.raises(ValueError, match=r"distil_student_unet .*inference tensors"):
        distil_student_unet(
            network, classifier_with_head(), "head", tiny_explainer(), _images(), batch_size=8
        )


def test_the_distillations_refuse_images_of_another_channel_count():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\), got shape \(16, 1, 32, 32\)"):
        distil_class_maps(
            ClassMapStudent(NUM_CLASSES, width=4), classifier_with_head(), "head", _images(1),
            epochs=1, batch_size=8,
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\), got shape \(16, 1, 32, 32\)"):
        distil_student_unet(
            _student_explainer(), classifier_with_head(), "head", tiny_explainer(), _images(1),
            epochs=1, batch_size=8,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("epochs", "batch_size", "message"),
    [
        (1.5, 8, "epochs must be an integer >= 1, got 1.5"),
        (True, 8, "epochs must be an integer >= 1, got True"),
        (0, 8, "epochs must be an integer >= 1, got 0"),
        (1, 2.0, "batch_size must be an integer >= 1, got 2.0"),
    ],
)
def test_the_distillations_refuse_epochs_and_batch_sizes_that_are_no_integers(
    epochs, batch_size, message
):
    student = ClassMapStudent(NUM_CLASSES, width=4)
    with pytest.raises(ValueError, match=message):
        distil_class_maps(
            student, classifier_with_head(), "head", _images(), epochs=epochs,
            batch_size=batch_size,
        )  # fmt: skip


def test_a_teacher_made_under_inference_mode_teaches_and_is_left_as_it_was():
    """The teacher runs without gradients only; freezing it set requires_grad on its inference
    tensors ("not allowed outside InferenceMode") and left its flags and modes switched."""
    with torch.inference_mode():
        teacher = tiny_explainer()
    teacher.train()
    flags = [p.requires_grad for p in teacher.parameters()]
    torch.manual_seed(0)
    network = _student_explainer()
    history = distil_student_unet(
        network, classifier_with_head(), "head", teacher, _images(), epochs=1, batch_size=8
    )
    assert len(history) == 1 and network.is_trained
    assert teacher.training and all(module.training for module in teacher.modules())
    assert [p.requires_grad for p in teacher.parameters()] == flags
    trainable = tiny_explainer()
    distil_student_unet(
        _student_explainer(), classifier_with_head(), "head", trainable, _images(), epochs=1,
        batch_size=8,
    )  # fmt: skip
    assert all(p.requires_grad for p in trainable.parameters())  # switched back on
