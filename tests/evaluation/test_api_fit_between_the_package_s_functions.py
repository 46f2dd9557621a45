"""What one function of the package returns or takes, its neighbours take too.

The package's own heatmaps (``relevance_heatmap``: ``(N, H, W)``) were refused by the metrics
that call a method ("must return (N, 1, H, W)"); ``measure_cost`` required ``targets`` that it
reads as ``None`` (the predicted classes) like its siblings; ``GridSegmenter`` refused the
``cache=`` every other segmenter takes; a tensor of images given as ``explain_dataset``'s
``images`` (a count) failed with "Boolean value of Tensor".
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin.evaluation.sensitivity import max_sensitivity, measure_cost
from ctc_plugin.features import GridSegmenter
from ctc_plugin.testing import CNNSpec, RandomCNN


def _model() -> nn.Module:
    return RandomCNN(CNNSpec(), seed=1).eval()


def _heatmaps(model, images, targets, feature_mask):
    """A method returning (N, H, W) maps, as relevance_heatmap does."""
    return images.mean(1) * 2


def test_maps_without_their_channel_dimension_are_read_as_one_channel():
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    maps, cost = measure_cost(_heatmaps, _model(), images)
    assert maps.shape == (2, 1, 8, 8) and cost.seconds_per_image >= 0
    torch.testing.assert_close(maps[:, 0], images.mean(1) * 2)
    assert max_sensitivity(_heatmaps, _model(), images, radius=0.0).abs().max() == 0


def test_a_grid_segmenter_takes_the_cache_argument_of_the_others():
    images = torch.rand(1, 3, 8, 8)
    assert torch.equal(GridSegmenter(2, cache=False)(images), GridSegmenter(2)(images))


def test_a_tensor_given_as_the_count_of_images_is_named():
    from ctc_plugin.runs.sources import SourceError, resolve_source

    with pytest.raises(SourceError, match=r"images is how many images to explain .*got Tensor"):
        resolve_source("shapes", images=torch.rand(2, 3, 8, 8))
    with pytest.raises(SourceError, match=r"got bool"):
        resolve_source("shapes", images=True)
