"""plot_segment_scores draws a grayscale image and says how to pass the shapes it refuses.

A one-channel model's image, (1, H, W) or (H, W), was refused; a batch, a channels-last array
or an RGBA image was refused with no word on what to pass instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctc_plugin.viz import plot_segment_scores

MASK = torch.zeros(8, 12, dtype=torch.long)
MASK[:, 6:] = 1


@pytest.mark.parametrize("shape", [(1, 8, 12), (8, 12), (1, 1, 8, 12)])
def test_a_grayscale_image_is_drawn_in_gray(shape):
    gray = torch.rand(8, 12)
    figure = plot_segment_scores(gray.reshape(shape), MASK, [1.0, -1.0])
    drawn = np.asarray(figure.axes[0].images[0].get_array())  # with the segment outlines
    repeat = drawn.shape[0] // 8  # each pixel drawn as a block (thin outlines)
    inside = drawn[::repeat, ::repeat][1:7, 1:5]  # away from the outlines
    np.testing.assert_allclose(inside[..., 0], inside[..., 1])
    np.testing.assert_allclose(inside[..., 0], inside[..., 2])
    np.testing.assert_allclose(inside[..., 0], gray.numpy()[1:7, 1:5], atol=1e-6)


@pytest.mark.parametrize(
    ("image", "hint"),
    [
        (torch.rand(2, 3, 8, 12), "images[i]"),
        (torch.rand(8, 12, 3), "permute(2, 0, 1)"),
        (np.random.rand(8, 12, 3), "transpose(2, 0, 1)"),
        (torch.rand(4, 8, 12), "image[:3]"),
    ],
)
def test_other_shapes_are_refused_saying_what_to_pass(image, hint):
    with pytest.raises(ValueError, match="expected an image shaped") as refused:
        plot_segment_scores(image, MASK, [1.0, -1.0])
    assert hint in str(refused.value)


def test_a_bicubic_resize_s_overshoot_is_drawn_clipped_not_refused():
    # an image in [0, 1] resized bicubically lies a little outside it; it was refused, told
    # to pass "the pixels before normalisation"
    small = torch.rand(1, 3, 8, 12)
    image = torch.nn.functional.interpolate(small, size=(16, 24), mode="bicubic")[0]
    assert float(image.min()) < -0.01 or float(image.max()) > 1.01
    mask = torch.zeros(16, 24, dtype=torch.long)
    mask[:, 12:] = 1
    figure = plot_segment_scores(image, mask, [1.0, -1.0])
    drawn = np.asarray(figure.axes[0].images[0].get_array())
    assert drawn.min() >= 0.0 and drawn.max() <= 1.0
