"""CTC without a feature mask on images that are not RGB.

The segmenters take RGB images. A grayscale model (MNIST-style, (N, 1, H, W)) gets the
segments of its images with the channel repeated, while the model keeps its one channel (the
advice to repeat the channel before calling CTC made the model itself fail); other channel
counts are refused saying how to segment them.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.features import SuperpixelSegmenter


def model(channels: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()  # fmt: skip


def test_a_grayscale_model_is_segmented_on_its_channel_repeated():
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    got, scores = CTC(model(1)).attribute(x, 1, return_feature_scores=True)
    mask = SuperpixelSegmenter()(x.expand(-1, 3, -1, -1))
    expected = CTC(model(1)).attribute(x, 1, feature_mask=mask)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected)
    assert torch.equal(scores.feature_mask[0], mask)


def test_other_channel_counts_are_refused_with_the_way_to_segment_them():
    with pytest.raises(ValueError, match=r"these have 4 channels: segment an RGB view.*x\[:, :3\]"):
        CTC(model(4)).attribute(torch.rand(1, 4, 16, 16), 0)


def test_a_segmenter_that_takes_any_channels_keeps_taking_them():
    """GridSegmenter reads the shape only: four-channel (multispectral) images are segmented."""
    from ctc_plugin.features import GridSegmenter

    got = CTC(model(4), segmenter=GridSegmenter()).attribute(torch.rand(1, 4, 16, 16), 0)
    assert got.shape == (1, 4, 16, 16)


@pytest.mark.parametrize(
    ("channels", "hint"),
    [
        (1, r"x\.permute\(0, 3, 1, 2\)\.expand\(-1, 3, -1, -1\)"),
        (3, r"x\.permute\(0, 3, 1, 2\)$"),
        (4, r"x\.permute\(0, 3, 1, 2\)\[:, :3\]"),
    ],
)
def test_a_channels_last_batch_keeps_the_segmenters_permute_hint(channels, hint):
    with pytest.raises(ValueError, match=rf"got shape \(2, 28, 28, {channels}\).*{hint}"):
        CTC(model(channels)).attribute(torch.rand(2, 28, 28, channels), 0)
