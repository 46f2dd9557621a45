"""Shipped explainers: small files, better localisation than Grad-CAM, class specificity."""

from __future__ import annotations

import functools
import shlex

import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ctc_plugin import zoo
from ctc_plugin.cam.transformers import grad_cam_layer
from ctc_plugin.cli import main
from ctc_plugin.commands.explainer import built_with
from ctc_plugin.datasets import ShapesDataset
from ctc_plugin.evaluation.localisation import binarize, iou
from ctc_plugin.explainer.attribution import ExplainerAttribution
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.explainer.specificity import (
    specificity_table,
    two_object_images,
    two_object_training_data,
)
from ctc_plugin.zoo.explainers import (
    KINDS,
    explainer_path,
    load_explainer,
    shipped_explainers,
)

SHIPPED = shipped_explainers()  # every (family, split) file of the default kind in the zoo
SHIPPED_SHAPES = [pair for pair in SHIPPED if pair[1] == "shapes"]
CLASS_SPECIFIC = shipped_explainers("class-specific")
DISTILLED = shipped_explainers("distilled")
EVERY_KIND = [(f, s, kind) for kind in KINDS for f, s in (SHIPPED if kind == "default" else [])] + [
    (f, s, kind) for kind in KINDS[1:] for f, s in shipped_explainers(kind)
]
TEST_SEED = 2024  # neither the training (0) nor the validation (1000) seed
MARGIN = 0.1
#: Families whose explainers are measured in ``make test``; the others in ``make test-slow``
#: (a convolutional and a transformer family: the two kinds of backbone the explainers gate)
FAST_FAMILIES = ("resnet", "vit")


def fast_families_only(cases: list[tuple]) -> list:
    """``cases`` (family first), those of families outside `FAST_FAMILIES` marked slow."""
    return [
        case if case[0] in FAST_FAMILIES else pytest.param(*case, marks=pytest.mark.slow)
        for case in cases
    ]


@functools.cache
def split_data(split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    data = ShapesDataset(split, size=50, seed=TEST_SEED)
    items = [data[i] for i in range(len(data))]
    images = torch.stack([item["image"] for item in items])
    labels = torch.tensor([item["label"] for item in items])
    evidence = torch.stack([item["evidence"] for item in items])
    return images, labels, evidence


def test_at_least_one_explainer_is_shipped():
    assert SHIPPED_SHAPES, "no shipped explainer for the shapes split in ctc_plugin/zoo/weights"


@pytest.mark.parametrize(
    ("kind", "shipped"), [("class-specific", CLASS_SPECIFIC), ("distilled", DISTILLED)]
)
def test_every_zoo_family_has_explainers_of_both_class_specific_kinds(kind, shipped):
    assert sorted(f for f, s in shipped if s == "shapes") == sorted(zoo.FAMILIES), kind


@pytest.mark.parametrize(("family", "split", "kind"), EVERY_KIND)
def test_shipped_file_is_small_and_documents_its_command(family, split, kind):
    assert explainer_path(family, split, kind).stat().st_size < 2_000_000
    explainer = zoo.load_explainer(family, split, kind)
    assert explainer.is_trained and explainer.trained_image_size == (96, 96)
    command = explainer.metadata["command"]
    gated = ("classifier-gated", "student-gated", "student-unet")  # made from the default one
    if explainer.backbone_name in gated:
        assert command.startswith(f"ctc-plugin explainer gate --model {family} --split {split}")
    else:
        assert command.startswith(f"ctc-plugin explainer train --model {family}")
    assert (explainer.backbone_name != "unet-small") == (kind != "default")
    assert (explainer.backbone_name == "student-unet") == (kind == "distilled")
    # every trained file names the thread count its command reproduces it at (the classifier
    # gate trains nothing)
    trained = not command.endswith("--gate classifier")
    assert ("threads" in explainer.metadata) == trained
    assert not trained or command.endswith(f"--threads {explainer.metadata['threads']}")


@pytest.mark.slow
def test_a_stored_command_gives_the_shipped_weights_again(tmp_path):
    """Rerun the resnet class-specific file's command (the kind most sensitive to rounding)."""
    shipped = load_explainer("resnet", "shapes", "class-specific")
    here = built_with()
    if shipped.metadata["torch"] != here["torch"]:
        torch_release = shipped.metadata["torch"]
        pytest.skip(f"bit for bit only with the torch it was built with ({torch_release})")
    if shipped.metadata.get("cpu") != here["cpu"]:
        # the same command on another CPU gives other weights (measured: AVX512 here, two runs
        # identical, and a backbone.scale of 1.04686 against the shipped 1.04715)
        pytest.skip(
            f"bit for bit only on the CPU kind it was built on ({shipped.metadata.get('cpu')}; "
            f"here {here['cpu']}); files built before the CPU was recorded give None"
        )
    argv = shlex.split(shipped.metadata["command"])[1:]  # it names its thread count
    out = tmp_path / "rebuilt.pt"
    assert main([*argv, "--no-progress", "--out", str(out)]) == 0
    rebuilt = Explainer.load(out, classifier=zoo.load("resnet"))
    for key, value in shipped.state_dict().items():
        if key in Explainer.ADDED_STATE and not value.any():  # shipped before it was recorded
            continue
        assert torch.equal(rebuilt.state_dict()[key], value), key


#: Files below the localisation bar since Grad-CAM explains the last feature map (it had taken the
#: last Conv2d registered, one branch of inception's last block): the class-specific inception
#: file localises 0.093 above Grad-CAM on 200 test images, not 0.1.
BELOW_THE_BAR = {("inception", "shapes", "class-specific")}


def _localisation_cases() -> list:
    return [
        pytest.param(
            *case.values,
            marks=[
                *case.marks,
                pytest.mark.xfail(
                    strict=True,
                    raises=AssertionError,  # the bar missed; a crash is no known limitation
                    reason="0.093 above Grad-CAM on its last feature map (docs)",
                ),
            ],
        )
        if tuple(case.values) in BELOW_THE_BAR
        else case
        for case in (
            c if hasattr(c, "values") else pytest.param(*c) for c in fast_families_only(EVERY_KIND)
        )
    ]


@pytest.mark.parametrize(("family", "split", "kind"), _localisation_cases())
def test_localises_the_evidence_better_than_grad_cam(family, split, kind):
    images, labels, evidence = split_data(split)
    model = zoo.load(family, split)
    explainer = load_explainer(family, split, kind)
    masks = ExplainerAttribution(model, explainer).attribute(images, labels)
    layer, reshape = grad_cam_layer(model, images)
    with GradCAM(model, [layer], reshape_transform=reshape) as cam:
        grad_cam = cam(images, targets=[ClassifierOutputTarget(int(c)) for c in labels])
    ours = iou(binarize(masks[:, 0], 0.5), evidence).nanmean().item()
    theirs = iou(binarize(torch.from_numpy(grad_cam), 0.5), evidence).nanmean().item()
    assert ours > theirs + MARGIN, f"explainer IoU {ours:.3f} vs Grad-CAM {theirs:.3f}"


def specificity_holds(family: str, kind: str) -> None:
    """The class's own mask keeps its probability; the other object's mask removes most of it."""
    data = ShapesDataset("shapes", size=200, seed=TEST_SEED + 1)
    images, pairs = two_object_images(data, 40)
    table = specificity_table(
        zoo.load(family), load_explainer(family, "shapes", kind), images, pairs, data.classes
    )
    seen = table.counts > 0
    assert (table.own_mask[seen] >= 0.8 * table.unmasked[seen]).all(), table.markdown()
    assert table.other_mask[seen].mean() < 0.5 * table.own_mask[seen].mean(), table.markdown()


@pytest.mark.parametrize(
    ("family", "kind"),
    fast_families_only(
        [(f, "class-specific") for f, s in CLASS_SPECIFIC if s == "shapes"]
        + [(f, "distilled") for f, s in DISTILLED if s == "shapes"]
    ),
)
def test_class_specific_explainers_are_class_specific_on_two_object_images(family, kind):
    specificity_holds(family, kind)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,  # specificity missed; a crash is no known limitation
    reason="measured: the small U-Net's absent-class maps cover the object as much as the "
    "present class's, and 570-step, deeper-U-Net and lambda_nc=20 runs did not change that "
    "(docs/design-notes/explainer.md, 'Attempts to make the small U-Net class-specific'); the "
    "class-specific and distilled kinds are the answer",
)
def test_class_specificity_of_the_default_explainers():
    specificity_holds(SHIPPED_SHAPES[0][0], "default")


def test_the_class_specific_table_gives_both_models_back_in_their_modes():
    data = ShapesDataset("shapes", size=40, seed=TEST_SEED + 1)
    images, pairs = two_object_images(data, 4)
    classifier, explainer = zoo.load("resnet").train(), load_explainer("resnet", "shapes")
    explainer.train()
    classifier.get_submodule(zoo.HEADS["resnet"]).requires_grad_(False)  # mixed flags
    flags = [p.requires_grad for m in (classifier, explainer) for p in m.parameters()]
    table = specificity_table(classifier, explainer, images, pairs, data.classes)
    assert classifier.training and explainer.training
    assert [p.requires_grad for m in (classifier, explainer) for p in m.parameters()] == flags
    assert not all(flags) and any(flags)
    with pytest.raises(IndexError):  # a failed call too
        specificity_table(classifier, explainer, images, pairs + 10, data.classes)
    assert classifier.training and explainer.training
    assert [p.requires_grad for m in (classifier, explainer) for p in m.parameters()] == flags
    assert table.counts.sum() == 2 * len(images)
    with torch.no_grad():  # measured in eval mode: the same table as with eval-mode models
        again = specificity_table(classifier.eval(), explainer.eval(), images, pairs, data.classes)
    torch.testing.assert_close(table.own_mask, again.own_mask, equal_nan=True)


def test_unknown_kind_family_or_split_is_an_error():
    with pytest.raises(ValueError, match="unknown explainer kind 'fast'"):
        load_explainer("resnet", "shapes", "fast")
    with pytest.raises(ValueError, match="unknown model family 'bogus'; expected one of"):
        load_explainer("bogus")  # not "train it with ... --model bogus"
    with pytest.raises(ValueError, match="unknown split 'nosplit'"):
        load_explainer("resnet", "nosplit")


def test_two_object_images_hold_both_objects():
    data = ShapesDataset("shapes", size=60, seed=TEST_SEED + 1)
    images, pairs = two_object_images(data, 5)
    assert images.shape == (5, 3, 96, 96) and (pairs[:, 0] != pairs[:, 1]).all()
    index = 0
    for i in range(0, 59, 2):  # the first combinable pair is the first image
        a, b = data[i], data[i + 1]
        if a["label"] != b["label"]:
            near = torch.nn.functional.max_pool2d(a["evidence"][None, None].float(), 7, 1, 3)[0, 0]
            if not ((near > 0) & b["evidence"]).any():
                torch.testing.assert_close(
                    images[index][:, b["evidence"]], b["image"][:, b["evidence"]]
                )
                torch.testing.assert_close(
                    images[index][:, a["evidence"]], a["image"][:, a["evidence"]]
                )
                assert pairs[index].tolist() == [a["label"], b["label"]]
                break


def test_two_object_training_data_has_multi_hot_labels_of_both_objects():
    images, labels = two_object_training_data(6, seed=5)
    source = ShapesDataset("shapes", size=64, seed=5)
    expected_images, pairs = two_object_images(source, 6)
    torch.testing.assert_close(images, expected_images)
    assert labels.shape == (6, 6) and (labels.sum(1) == 2).all()
    assert labels.gather(1, pairs).eq(1).all()
    with pytest.raises(ValueError, match="count"):
        two_object_training_data(0, seed=5)
