"""``hf:FOLDER`` prepares photos as the folder's image processor does, its rescale included.

Only ``image_mean``/``image_std`` were read: a processor with ``rescale_factor=1/127.5`` (and
mean 1, std 1) gave silently other pixels than transformers, and one with ``do_rescale=False``
(mean and std on the 0..255 scale) was refused as "no image classifier".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ctc_plugin.commands.models import processor_preprocessing

transformers = pytest.importorskip("transformers")


def _processors():
    plain = {"do_resize": False}
    vit = transformers.ViTImageProcessor
    efficientnet = transformers.EfficientNetImageProcessor
    still = {**plain, "do_center_crop": False}
    return {
        "standard": vit(**plain),
        "rescale to [-1, 1]": vit(**plain, rescale_factor=1 / 127.5, image_mean=1.0, image_std=1.0),
        "no rescale, 0..255 statistics": vit(
            **plain, do_rescale=False, image_mean=[127.5, 120.0, 100.0], image_std=[127.5, 60, 70]
        ),
        "no normalisation": vit(**plain, do_normalize=False),
        "no rescale, no normalisation": vit(**plain, do_rescale=False, do_normalize=False),
        "EfficientNet, include_top": efficientnet(**still),
        "EfficientNet, offset": efficientnet(
            **still, rescale_factor=1 / 127.5, rescale_offset=True, include_top=False
        ),
    }


@pytest.mark.parametrize("name", list(_processors()))
def test_the_prepared_input_equals_the_processor_s(name):
    processor = _processors()[name]
    pixels = np.random.default_rng(0).integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    photo = Image.fromarray(pixels)
    theirs = processor(images=photo, return_tensors="pt")["pixel_values"].float()
    ours = processor_preprocessing(processor)(photo).normalized
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_a_shift_past_1_with_a_small_std_is_no_0_to_255_scale():
    """EfficientNet's rescale_offset at the default 1/255 folds into mean 1.5, std 0.5: the
    statistics were refused as "on the 0..255 scale" with advice that would change the pixels."""
    processor = transformers.EfficientNetImageProcessor(
        do_resize=False, do_center_crop=False, rescale_offset=True, include_top=False
    )
    photo = Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8))
    theirs = processor(images=photo, return_tensors="pt")["pixel_values"].float()
    ours = processor_preprocessing(processor)(photo).normalized
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
