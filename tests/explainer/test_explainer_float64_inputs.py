"""ExplainerAttribution on float64 images: the classifier gets them as they are, the explainer a
copy in its own dtype, and the masks come back in the input's dtype (as Captum's methods do)."""

from __future__ import annotations

import torch

from ctc_plugin import ExplainerAttribution
from tests.explainer.helpers import NUM_CLASSES, SIZE, tiny_classifier, tiny_explainer


def _trained_explainer():
    explainer = tiny_explainer().eval()
    explainer.trained_steps.fill_(1)
    explainer.image_size.copy_(torch.tensor([SIZE, SIZE]))
    return explainer


def test_float64_images_and_classifier_give_float64_masks():
    classifier = tiny_classifier().eval().double()
    explainer = _trained_explainer()
    images = torch.rand(2, 3, SIZE, SIZE, dtype=torch.float64)
    attribution = ExplainerAttribution(classifier, explainer)
    for target in (None, 1, [0, NUM_CLASSES - 1]):
        masks = attribution.attribute(images, target=target)
        assert masks.dtype == torch.float64 and masks.shape == images.shape
        assert ((masks >= 0) & (masks <= 1)).all()
    expected = explainer.masks(images.float())[:, 1:2].expand_as(images).double()
    torch.testing.assert_close(attribution.attribute(images, target=1), expected)
    assert next(explainer.parameters()).dtype == torch.float32  # the explainer is not converted


def test_float64_images_for_a_float32_classifier_name_both_dtypes_and_the_fix():
    from ctc_plugin import DtypeMismatchError

    classifier = tiny_classifier().eval()
    attribution = ExplainerAttribution(classifier, _trained_explainer())
    images = torch.rand(2, 3, SIZE, SIZE, dtype=torch.float64)
    for target in (None, 1):
        try:
            attribution.attribute(images, target=target)
        except DtypeMismatchError as error:
            message = str(error)
        else:
            raise AssertionError("float64 images ran through a float32 classifier")
        assert "the inputs are torch.float64 and the model computes in torch.float32" in message
        assert "x.to(torch.float32)" in message
    assert not any(m._forward_hooks for m in classifier.modules())


def test_images_of_another_size_are_refused_with_both_ways_forward():
    attribution = ExplainerAttribution(tiny_classifier().eval(), _trained_explainer())
    larger = torch.rand(1, 3, SIZE * 2, SIZE * 2)
    try:
        attribution.attribute(larger, target=0)
    except ValueError as error:
        message = str(error)
    else:
        raise AssertionError("an image of another size than the training images was explained")
    assert f"trained on {SIZE}x{SIZE} images but got {2 * SIZE}x{2 * SIZE}" in message
    assert "resize the inputs" in message and "several sizes takes any size" in message
