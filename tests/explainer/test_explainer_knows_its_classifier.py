"""An Explainer records the classifier it was trained for, and says when it explains another.

Before, ``ExplainerAttribution(other_classifier, explainer)`` gave the masks of the classifier
the explainer was trained for, without a word, whenever the class counts matched: a classifier
whose weights were never loaded, or a fine-tuned one, got another model's explanation.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from ctc_plugin import ExplainerAttribution
from ctc_plugin.explainer.attribution import ClassifierMismatchWarning
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.checkpoints import load_checkpoint
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.explainer.student_unet import distil_student_unet
from ctc_plugin.module_state import state_digest

from .helpers import (
    FAST,
    NUM_CLASSES,
    SIZE,
    classifier_with_head,
    data,
    tiny_classifier,
    tiny_explainer,
    tuple_loader,
)


def _trained(classifier: nn.Module, **options) -> Explainer:
    explainer = tiny_explainer()
    explainer.fit(classifier, tuple_loader(), epochs=1, **FAST, **options)
    return explainer


def _explain(classifier: nn.Module, explainer: Explainer, **options) -> list[str]:
    images, _ = data(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ExplainerAttribution(classifier, explainer, **options).attribute(images, target=0)
    return [str(w.message) for w in caught if issubclass(w.category, ClassifierMismatchWarning)]


def test_fit_records_the_classifier_and_a_file_keeps_it(tmp_path):
    classifier = tiny_classifier(seed=0).eval()
    assert tiny_explainer().trained_for is None
    explainer = _trained(classifier)
    assert explainer.trained_for == state_digest(classifier)
    loaded = Explainer.load(explainer.save(tmp_path / "e.pt"))
    assert loaded.trained_for == state_digest(classifier)


def test_another_classifier_is_named_and_its_own_is_not():
    classifier = tiny_classifier(seed=0).eval()
    explainer = _trained(classifier)
    assert _explain(classifier, explainer) == []
    assert _explain(nn.DataParallel(classifier), explainer) == []  # the same weights
    (message,) = _explain(tiny_classifier(seed=1).eval(), explainer)
    assert "trained for a classifier with other weights" in message
    assert explainer.trained_for[:12] in message
    assert _explain(tiny_classifier(seed=1).eval(), explainer, check_classifier=False) == []


def _first_call_of_its_own_classifier():
    """(classifier, explainer, attribution, images) after a call that must not warn."""
    classifier = tiny_classifier(seed=0).eval()
    explainer = _trained(classifier)
    attribution = ExplainerAttribution(classifier, explainer)
    images, _ = data(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClassifierMismatchWarning)
        attribution.attribute(images, target=0)
    return classifier, explainer, attribution, images


def test_weights_loaded_after_the_first_call_are_checked_again():
    classifier, _, attribution, images = _first_call_of_its_own_classifier()
    classifier.load_state_dict(tiny_classifier(seed=1).eval().state_dict())
    with pytest.warns(ClassifierMismatchWarning) as caught:
        attribution.attribute(images, target=0)
    assert caught[0].filename == __file__  # points at the caller's line


def test_files_of_older_versions_load_without_a_record_and_are_not_checked(tmp_path):
    explainer = _trained(tiny_classifier(seed=0))
    path = explainer.save(tmp_path / "e.pt")
    payload = torch.load(path, weights_only=True)
    del payload["state_dict"]["classifier_digest"]  # as written before it was recorded
    torch.save(payload, path)
    loaded = Explainer.load(path)
    assert loaded.trained_for is None
    assert _explain(tiny_classifier(seed=1).eval(), loaded) == []
    own = tiny_explainer()
    own.load_state_dict(payload["state_dict"])  # a user's own state dict of an older version
    assert own.trained_for is None


def test_a_checkpoint_of_an_older_version_resumes_and_the_result_knows_its_classifier(tmp_path):
    classifier = tiny_classifier(seed=0).eval()
    ckpt = tmp_path / "run.ckpt"
    _trained(classifier, checkpoint=ckpt, seed=1)
    state = load_checkpoint(ckpt)
    for name in ("explainer", "best_state"):
        del state[name]["classifier_digest"]
    torch.save(state, ckpt)
    resumed = tiny_explainer()
    result = resumed.fit(classifier, tuple_loader(), epochs=2, seed=1, resume=ckpt, **FAST)
    assert len(result.history) == 2
    assert resumed.trained_for == state_digest(classifier)


def test_fit_for_a_new_classifier_replaces_the_record():
    explainer = _trained(tiny_classifier(seed=0))
    other = tiny_classifier(seed=1).eval()
    explainer.fit(other, tuple_loader(), epochs=1, **FAST)
    assert explainer.trained_for == state_digest(other)


def test_the_distillation_records_its_classifier():
    torch.manual_seed(0)
    classifier = classifier_with_head()
    teacher = Explainer(build_backbone("unet-small", NUM_CLASSES, width=2), NUM_CLASSES)
    student = Explainer(build_backbone("student-unet", NUM_CLASSES, width=4), NUM_CLASSES)
    images = torch.rand(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    distil_student_unet(student, classifier, "head", teacher, images, epochs=1, batch_size=8)
    assert student.trained_for == state_digest(classifier)


def test_the_untrained_warning_points_at_the_caller_too():
    images, _ = data(2)
    with pytest.warns(UserWarning, match="has not been trained") as caught:
        ExplainerAttribution(tiny_classifier().eval(), tiny_explainer()).attribute(images, 0)
    assert caught[0].filename == __file__


class _WithExtraState(nn.Sequential):
    """A classifier whose state dict holds an entry that is not a tensor."""

    def get_extra_state(self):
        return {"labels": ["a", "b"]}

    def set_extra_state(self, state):
        pass


def test_a_classifier_with_extra_state_is_recorded_and_checked():
    classifier = _WithExtraState(*tiny_classifier(seed=0)).eval()
    explainer = _trained(classifier)
    assert explainer.trained_for == state_digest(classifier)
    assert _explain(classifier, explainer) == []
    assert len(_explain(_WithExtraState(*tiny_classifier(seed=1)).eval(), explainer)) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_copy_of_its_classifier_in_another_precision_is_the_same_classifier(dtype):
    classifier = tiny_classifier(seed=0).eval()
    explainer = _trained(classifier)
    images, _ = data(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClassifierMismatchWarning)
        ExplainerAttribution(classifier.to(dtype), explainer).attribute(images.to(dtype), 0)
    other = tiny_classifier(seed=1).eval().to(dtype)
    with pytest.warns(ClassifierMismatchWarning):
        ExplainerAttribution(other, explainer).attribute(images.to(dtype), 0)


def test_quantized_layers_differing_in_the_middle_of_their_weights_differ():
    def quantized(middle: float | None) -> nn.Module:
        torch.manual_seed(0)
        linear = nn.Sequential(nn.Linear(64, 64)).eval()
        with torch.no_grad():
            weight = linear[0].weight
            weight.clamp_(-0.1, 0.1)[0, 0] = 0.1  # one largest value: the scale stays put
            if middle is not None:
                weight[32, 32] = middle  # far from the corners a repr shows
        return torch.ao.quantization.quantize_dynamic(linear, {nn.Linear}, dtype=torch.qint8)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation of quantize_dynamic
        same, other = quantized(None), quantized(-0.05)
        assert repr(same.state_dict()) == repr(other.state_dict())  # what the digest read
        assert state_digest(same) == state_digest(quantized(None))
        assert state_digest(same) != state_digest(other)


def test_a_record_changed_after_the_first_call_is_read_again():
    _, explainer, attribution, images = _first_call_of_its_own_classifier()
    explainer.record_classifier(tiny_classifier(seed=1).eval())  # trained for another since
    with pytest.warns(ClassifierMismatchWarning):
        attribution.attribute(images, target=0)


@pytest.mark.parametrize("kind", ["default", "distilled", "class-specific"])
def test_a_shipped_explainer_knows_its_zoo_model(kind):
    """The zoo's explainers were shipped before the record existed; loading one records the zoo
    model it was trained against, so another zoo model warns and its own does not."""
    from ctc_plugin import zoo

    explainer = zoo.load_explainer("vgg", kind=kind)
    assert explainer.trained_for == state_digest(zoo.load("vgg"))
    images = torch.rand(2, 3, *explainer.trained_image_size)
    with pytest.warns(ClassifierMismatchWarning):
        ExplainerAttribution(zoo.load("resnet"), explainer).attribute(images, target=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClassifierMismatchWarning)
        ExplainerAttribution(zoo.load("vgg"), explainer).attribute(images, target=0)


@pytest.mark.parametrize("made_there", ["explainer", "classifier", "both"])
def test_an_explainer_or_classifier_made_under_inference_mode_is_checked(made_there):
    """Serving code loads models under ``torch.inference_mode()``; an explainer loaded there
    failed every call ("Inference tensors do not track version counter")."""
    classifier = tiny_classifier(seed=0).eval()
    explainer = _trained(classifier)
    state, other = explainer.state_dict(), tiny_classifier(seed=1).eval()
    if made_there in ("explainer", "both"):
        with torch.inference_mode():
            explainer = tiny_explainer()
            explainer.load_state_dict(state)
            explainer.record_classifier(classifier)
        assert explainer.classifier_digest.is_inference()
    if made_there in ("classifier", "both"):
        with torch.inference_mode():
            copies = tiny_classifier(seed=0).eval(), tiny_classifier(seed=1).eval()
        assert next(copies[0].parameters()).is_inference()
        classifier, other = copies
    assert _explain(classifier, explainer) == []
    assert len(_explain(other, explainer)) == 1
    images, _ = data(2)
    attribution = ExplainerAttribution(classifier, explainer)
    attribution.attribute(images, target=0)
    with torch.inference_mode():  # inference tensors are written only there
        next(classifier.parameters()).mul_(2.0)
        explainer.record_classifier(classifier)  # the record follows, in place or not
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClassifierMismatchWarning)
        attribution.attribute(images, target=0)
