"""ExplainerAttribution: the Captum contract, every target form, clear errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from captum.attr import Attribution
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin.explainer.attribution import ExplainerAttribution
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.explainer.presets import ExplainerHyperparameters

from .helpers import (
    NUM_CLASSES,
    classifier_with_head,
    data,
    tiny_classifier,
    tiny_explainer,
    tuple_loader,
)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    clf = tiny_classifier().eval()
    explainer = tiny_explainer()
    explainer.fit(
        clf, tuple_loader(), config=ExplainerHyperparameters(lr=1e-2), epochs=1, show_progress=False
    )
    return clf, explainer


def _expected(explainer, images, classes):
    with torch.no_grad():
        masks = explainer(images).sigmoid()
    return torch.stack([masks[i, c] for i, c in enumerate(classes)]).unsqueeze(1).expand_as(images)


def test_is_a_captum_attribution_with_logged_attribute(trained):
    attr = ExplainerAttribution(*trained)
    assert isinstance(attr, Attribution)
    assert hasattr(ExplainerAttribution.attribute, "__wrapped__")  # captum.log.log_usage()
    assert not attr.has_convergence_delta()


@pytest.mark.parametrize(
    "target",
    [2, (2,), torch.tensor(2), torch.tensor([2]), torch.tensor([2, 2, 2]), [2, 2, 2], [(2,)] * 3],
    ids=["int", "tuple", "0d", "1-elem", "per-example", "list", "list-of-tuples"],
)
def test_every_captum_target_form(trained, target):
    clf, explainer = trained
    images, _ = data(3, seed=4)
    out = ExplainerAttribution(clf, explainer).attribute(images, target=target)
    assert out.shape == images.shape
    torch.testing.assert_close(out, _expected(explainer, images, [2, 2, 2]))


def test_any_class_per_example_and_none_is_the_prediction(trained):
    clf, explainer = trained
    images, _ = data(4, seed=5)
    attr = ExplainerAttribution(clf, explainer)
    classes = [0, 1, 2, 1]
    torch.testing.assert_close(
        attr.attribute(images, target=torch.tensor(classes)), _expected(explainer, images, classes)
    )
    predicted = clf(images).argmax(1).tolist()
    torch.testing.assert_close(attr.attribute(images), _expected(explainer, images, predicted))


def test_no_gradients_and_tuple_inputs(trained):
    clf, explainer = trained
    images, _ = data(2, seed=6)
    images.requires_grad_(True)
    (out,) = ExplainerAttribution(clf, explainer).attribute((images,), target=1)
    assert not out.requires_grad and images.grad is None
    assert all(p.grad is None for p in explainer.parameters())


def test_explainer_mode_is_restored(trained):
    clf, explainer = trained
    explainer.train()
    ExplainerAttribution(clf, explainer).attribute(data(1)[0], target=0)
    assert explainer.training
    explainer.eval()


def test_class_count_mismatch(trained):
    _, explainer = trained
    attr = ExplainerAttribution(tiny_classifier(num_classes=NUM_CLASSES + 2).eval(), explainer)
    with pytest.raises(ValueError, match="class-count mismatch"):
        attr.attribute(data(2)[0], target=0)
    with pytest.raises(ValueError, match="class-count mismatch"):
        attr.attribute(data(2)[0])


def test_wrong_input_size_and_shape(trained):
    attr = ExplainerAttribution(*trained)
    with pytest.raises(ValueError, match="trained on 16x16 images"):
        attr.attribute(torch.rand(1, 3, 20, 16), target=0)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        attr.attribute(torch.rand(1, 1, 16, 16), target=0)


@pytest.mark.parametrize("target", [3, -4, [0, 1], (0, 1), "cat", 1.0, torch.tensor([2.0])])
def test_bad_targets(trained, target):
    with pytest.raises(ValueError):
        ExplainerAttribution(*trained).attribute(data(3)[0], target=target)


def test_negative_targets_count_from_the_end_as_in_captum(trained):
    clf, explainer = trained
    images, _ = data(3, seed=4)
    attr = ExplainerAttribution(clf, explainer)
    torch.testing.assert_close(
        attr.attribute(images, target=-1), _expected(explainer, images, [2, 2, 2])
    )
    torch.testing.assert_close(
        attr.attribute(images, target=[-3, -2, -1]), _expected(explainer, images, [0, 1, 2])
    )


def test_untrained_explainer_warns(trained):
    clf, _ = trained
    with pytest.warns(UserWarning, match="not been trained"):
        ExplainerAttribution(clf, tiny_explainer()).attribute(data(1)[0], target=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ExplainerAttribution(*trained).attribute(data(1)[0], target=0)


def test_needs_an_explainer(trained):
    with pytest.raises(TypeError, match="Explainer"):
        ExplainerAttribution(trained[0], torch.nn.Identity())


def test_usable_by_captum_metrics(trained):
    from captum.metrics import sensitivity_max

    clf, explainer = trained
    images, _ = data(2, seed=8)
    attr = ExplainerAttribution(clf, explainer)
    score = sensitivity_max(attr.attribute, images, target=1, n_perturb_samples=2)
    assert score.shape == (2,) and torch.isfinite(score).all()


@settings(max_examples=10, deadline=None)
@given(st.permutations(range(4)), st.integers(1, 4))
def test_independent_of_batch_composition(trained, order, keep):
    clf, explainer = trained
    images, _ = data(4, seed=9)
    classes = torch.tensor([0, 1, 2, 0])
    attr = ExplainerAttribution(clf, explainer)
    full = attr.attribute(images, target=classes)
    index = torch.tensor(order[:keep])
    part = attr.attribute(images[index], target=classes[index])
    torch.testing.assert_close(part, full[index], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["unet-small", "student-gated", "student-unet", "classifier"])
def test_inputs_run_in_the_backbones_memory_format_with_the_same_masks(trained, backbone):
    """Each backbone gets its inputs in its measured fastest memory format; masks agree."""
    classifier, explainer = trained
    if backbone != "unet-small":
        classifier = classifier_with_head().eval()
        torch.manual_seed(0)
        needs_classifier = {"classifier": classifier, "head": "head"}
        options = needs_classifier if backbone == "classifier" else {}
        explainer = Explainer(build_backbone(backbone, NUM_CLASSES, **options), NUM_CLASSES)
        explainer.trained_steps.fill_(1)  # counts as trained: no warning
        explainer.eval()
    expected_format = {
        "unet-small": torch.contiguous_format,
        "student-gated": torch.contiguous_format,
        "student-unet": torch.channels_last,
        "classifier": torch.channels_last,
    }
    assert explainer.input_memory_format == expected_format[backbone]
    seen = []
    # the gated backbone's class-map network (the student-unet's first block) sees them first
    first = getattr(explainer.backbone, "encoder", explainer.backbone)
    first = first[0] if backbone == "student-unet" else first
    hook = first.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    images = data(4, seed=3)[0]
    try:
        masks = ExplainerAttribution(classifier, explainer).attribute(images, target=1)
    finally:
        hook.remove()
    assert seen[0].is_contiguous(memory_format=expected_format[backbone])
    with torch.no_grad():
        direct = explainer.target_logits(images, torch.ones(4, dtype=torch.long)).sigmoid()
    torch.testing.assert_close(masks, direct.expand_as(images), rtol=1e-5, atol=1e-6)
