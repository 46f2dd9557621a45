"""A segmenter's mask must be one map per image, (N, 1, H, W): other shapes are refused.

A segmenter that returned its images' label maps as (N, H, W) (the channel dimension left out)
for three RGB images was read as Captum reads a (C, H, W) feature mask: one map per channel,
shared by the examples. Image 1's map became every image's green channel features, so each
score mixed the three images' segments; only a warning about a ``feature_mask`` the user never
gave said so (twice). A mask from a segmenter is never per channel: the call now refuses such
a mask, names the segmenter and says how to return it.
"""

from __future__ import annotations

import re

import pytest
import torch

from ctc_plugin import CTC, CTCAttributor
from ctc_plugin.features import GridSegmenter
from ctc_plugin.testing import RandomCNN


def _per_image_maps(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) maps that differ between images: a grid with one more row per image."""
    height, width = images.shape[-2:]
    maps = [GridSegmenter((2 + i, 2))(images[:1])[0] for i in range(len(images))]
    return torch.stack(maps).view(len(images), 1, height, width)


@pytest.mark.parametrize(
    "shape, returned, fix",
    [
        ("(N, H, W)", "(3, 12, 12)", r"mask\.unsqueeze\(1\)"),
        ("(N, C, H, W)", "(3, 3, 12, 12)", r"one map per image, \(N, 1, H, W\)"),
        ("(H, W)", "(12, 12)", r"one map per image, \(N, 1, H, W\)"),
    ],
)
@pytest.mark.parametrize("entry", ["CTC", "CTCAttributor"])
def test_a_mask_that_is_not_one_map_per_image_is_refused(shape, returned, fix, entry):
    images, model = torch.rand(3, 3, 12, 12), RandomCNN(seed=0)

    def segmenter(x: torch.Tensor) -> torch.Tensor:
        maps = _per_image_maps(x)
        if shape == "(N, H, W)":
            return maps[:, 0]  # as many images as channels: read per channel before
        if shape == "(N, C, H, W)":
            return maps.expand(-1, 3, -1, -1)
        return maps[0, 0]

    said = rf"the segmenter .*returned a mask of shape {re.escape(returned)} for 3 images"
    with pytest.raises(ValueError, match=said):
        if entry == "CTC":
            CTC(model, segmenter=segmenter).attribute(images, 1)
        else:
            CTCAttributor(model, segmenter=segmenter)(images)
    with pytest.raises(ValueError, match=fix):
        CTC(model, segmenter=segmenter).attribute(images, 1)


def test_one_map_per_image_and_one_for_the_batch_are_taken_as_they_are():
    images, model = torch.rand(3, 3, 12, 12), RandomCNN(seed=0)
    maps = _per_image_maps(images)
    got = CTC(model, segmenter=lambda x: maps).attribute(images, 1)
    torch.testing.assert_close(got, CTC(model).attribute(images, 1, feature_mask=maps))
    shared = maps[:1]
    got = CTC(model, segmenter=lambda x: shared).attribute(images, 1)
    torch.testing.assert_close(got, CTC(model).attribute(images, 1, feature_mask=shared))
