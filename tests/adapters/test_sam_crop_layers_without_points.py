"""Crop layers left without points are refused with what to change.

SAM prompts crop layer ``k`` with ``int(points_per_side / crop_n_points_downscale_factor**k)``
points per side. Was: a layer that got none was a bare ``ZeroDivisionError: division by zero``
from segment-anything's grid builder.
"""

from __future__ import annotations

import pytest

from ctc_plugin.adapters.sam import SAMSegmenter, build_tiny_sam


@pytest.mark.parametrize(
    ("points_per_side", "crop_n_layers", "factor"), [(2, 2, 2), (3, 1, 4), (1, 1, 2)]
)
def test_a_crop_layer_without_points_is_refused(points_per_side, crop_n_layers, factor):
    with pytest.raises(ValueError, match=rf"crop layer {crop_n_layers} .* 0 points per side"):
        SAMSegmenter(
            model=build_tiny_sam(),
            cache=None,
            points_per_side=points_per_side,
            crop_n_layers=crop_n_layers,
            crop_n_points_downscale_factor=factor,
        )


def test_every_layer_with_a_point_is_accepted():
    segmenter = SAMSegmenter(
        model=build_tiny_sam(),
        cache=None,
        points_per_side=4,
        crop_n_layers=2,
        crop_n_points_downscale_factor=2,
    )
    assert [len(grid) for grid in segmenter.generator.point_grids] == [16, 4, 1]
