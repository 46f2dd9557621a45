"""What a segmenter says about images outside its value range fits how far outside they are.

Was: images in [0, 1] resized with torchvision's bicubic ``Resize`` (which overshoots to about
[-0.06, 1.06]) were refused with the advice to declare ``value_range=(0, 255)`` (SAM then sees
a black image) or ``mean=``/``std=``; the fix is to clamp them.
"""

from __future__ import annotations

import re

import pytest
import torch
import torchvision.transforms.v2 as transforms

from ctc_plugin.adapters.sam import SAMSegmenter, build_tiny_sam
from ctc_plugin.features import ValueRangeError


@pytest.fixture(scope="module")
def segmenter() -> SAMSegmenter:
    return SAMSegmenter(model=build_tiny_sam(), cache=None, points_per_side=4)


def bicubic_resized() -> torch.Tensor:
    """A [0, 1] image with sharp edges enlarged as torchvision does with bicubic interpolation."""
    image = torch.zeros(1, 3, 16, 16)
    image[..., 4:12, 4:12] = 1.0
    resize = transforms.Resize((40, 40), interpolation=transforms.InterpolationMode.BICUBIC)
    resized = resize(image)
    assert resized.min() < -0.01 and resized.max() > 1.01  # it overshoots [0, 1]
    return resized


def test_values_a_little_past_the_range_are_told_to_be_clamped(segmenter):
    with pytest.raises(ValueRangeError, match=r"x\.clamp\(0, 1\)") as caught:
        segmenter(bicubic_resized())
    assert "255" not in str(caught.value)  # (0, 255) would make the image black
    segmenter(bicubic_resized().clamp(0, 1))  # the advice works


@pytest.mark.parametrize(
    ("images", "advice"),
    [(torch.full((1, 3, 8, 8), 200.0), "value_range=(0, 255)"), (torch.randn(1, 3, 8, 8), "mean=")],
)
def test_values_far_past_the_range_still_get_the_normalisation_advice(segmenter, images, advice):
    with pytest.raises(ValueRangeError, match=re.escape(advice)):
        segmenter(images)


def test_images_that_fill_a_sliver_of_the_declared_range_are_warned_about():
    """Was silent: images in [0, 1] declared as (0, 255) reached SAM as 8-bit values 0 and 1,
    a black image, and gave one feature."""
    from ctc_plugin.features import ValueRangeWarning

    declared_255 = SAMSegmenter(
        model=build_tiny_sam(), cache=None, value_range=(0, 255), points_per_side=4
    )
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.warns(ValueRangeWarning, match=r"value_range=\(0, 1\)"):
        declared_255(images)


@pytest.mark.parametrize("images", [torch.rand(1, 3, 16, 16) * 255, torch.zeros(1, 3, 16, 16)])
def test_images_that_use_their_range_or_are_flat_are_not_warned_about(images):
    import warnings

    declared_255 = SAMSegmenter(
        model=build_tiny_sam(), cache=None, value_range=(0, 255), points_per_side=4
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        declared_255(images)


def test_declared_normalised_images_are_told_to_clamp_before_normalising():
    """Clamping the normalised tensor itself to [0, 1] would cut most of its colours."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    segmenter = SAMSegmenter(model=build_tiny_sam(), cache=None, mean=mean, std=std)
    shift = torch.tensor(mean).view(1, 3, 1, 1)
    normalised = (bicubic_resized() - shift) / torch.tensor(std).view(1, 3, 1, 1)
    with pytest.raises(ValueRangeError, match=r"x\.clamp\(0, 1\) before normalising") as caught:
        segmenter(normalised)
    assert "declare it (mean=/std=)" not in str(caught.value)  # they are declared


@pytest.mark.parametrize("value_range", [(0, 1), (0, 255)])
def test_a_nearly_uniform_photo_in_its_declared_range_is_not_warned_about(value_range):
    """Was warned, with the advice to declare value_range=(0, 1) it was declared in: a grey
    sky varies within 2/255 of its range, but no declaration changes how it looks."""
    import warnings

    from ctc_plugin.features.base import ImageNormalisation

    noise = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    grey = (0.5 + 0.002 * noise) * value_range[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImageNormalisation(value_range=value_range).to_unit(grey)
