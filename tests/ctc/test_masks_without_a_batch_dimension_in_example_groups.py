"""A feature mask with fewer dimensions than its input is shared by every example.

Captum broadcasts a feature mask to the input from the right: an (H, W) mask or a per-channel
(C, H, W) mask has no batch dimension, whatever the size of its first dimension. On a CPU, CTC
explains a batch in groups of examples; such a mask must reach every group whole, also when its
first dimension happens to equal the batch size (an (H, W) mask of a batch of H images).
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin import CTC
from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition


@pytest.fixture(scope="module")
def model():
    return RandomCNN(CNNSpec(residual=True), seed=1).eval()


def _many_features(n: int) -> torch.Tensor:
    """An (n, n) mask of many features, so that the examples of a batch go in groups."""
    return random_partition(n, n, 40, seed=3)[0, 0]


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
def test_an_image_mask_as_tall_as_the_batch_is_shared(model, mode) -> None:
    n = 8  # the batch size equals the mask's height
    images = torch.rand(n, 3, n, n, generator=torch.Generator().manual_seed(0))
    mask = _many_features(n)
    ctc = CTC(model, bias_sharing=mode)
    shared = ctc.attribute(images, 1, feature_mask=mask.view(1, 1, n, n))
    torch.testing.assert_close(ctc.attribute(images, 1, feature_mask=mask), shared)


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
def test_a_per_channel_mask_with_as_many_channels_as_examples_is_shared(model, mode) -> None:
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    per_channel = _many_features(8) + 100 * torch.arange(3).view(3, 1, 1)  # (C, H, W), C == N
    ctc = CTC(model, bias_sharing=mode)
    with pytest.warns(UserWarning, match=r"one map per channel.*mask\.unsqueeze\(1\)"):
        attributions, scores = ctc.attribute(
            images, 1, feature_mask=per_channel, return_feature_scores=True
        )
    shared = ctc.attribute(images, 1, feature_mask=per_channel.unsqueeze(0))
    torch.testing.assert_close(attributions, shared)
    assert scores.feature_mask[0].shape == per_channel.shape
