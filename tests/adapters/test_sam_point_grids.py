"""``point_grids`` are checked when the segmenter is built.

Was: ``point_grids=`` without ``points_per_side=None`` was segment-anything's bare
``AssertionError`` (under ``python -O`` the grids were ignored without a word); fewer grids than
crop layers an ``IndexError`` after SAM had run on the first layer; points outside the image
(the grids hold fractions of its width and height) or a bare array instead of a list of grids
ran, prompting SAM where no pixel is.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctc_plugin.adapters.sam import SAMSegmenter, build_tiny_sam

CENTRE = np.array([[0.5, 0.5], [0.25, 0.75]])
KEEP = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def build(**options) -> SAMSegmenter:
    return SAMSegmenter(model=build_tiny_sam(), cache=None, **KEEP, **options)


def test_grids_without_points_per_side_none_say_so():
    with pytest.raises(ValueError, match=r"point_grids= replaces points_per_side: .*None"):
        build(point_grids=[CENTRE])


def test_as_many_grids_as_crop_layers_plus_one():
    with pytest.raises(ValueError, match=r"one grid per crop layer, 2 for crop_n_layers=1, got 1"):
        build(points_per_side=None, point_grids=[CENTRE], crop_n_layers=1)


@pytest.mark.parametrize(
    "grids",
    [
        [np.array([[5.0, 5.0]])],  # pixels, not fractions
        [np.array([[0.5, np.nan]])],
        [np.array([0.5, 0.5])],  # one point, not a grid of them
        np.array([[0.5, 0.5]]),  # an array, not a list of grids
        [[[0.5, 0.5, 0.5]]],
    ],
)
def test_grids_are_lists_of_points_in_the_unit_square(grids):
    with pytest.raises(ValueError, match=r"point_grids must be a list of \(n, 2\) arrays"):
        build(points_per_side=None, point_grids=grids)


def test_good_grids_prompt_sam_where_they_say():
    segmenter = build(points_per_side=None, point_grids=[CENTRE, CENTRE], crop_n_layers=1)
    assert segmenter(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    listed = build(points_per_side=None, point_grids=[CENTRE.tolist()])  # lists of lists too
    assert listed(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_one_array_of_grids_works_as_segment_anything_indexes_it():
    """A (layers, n, 2) array was refused with 'wrap one grid in a list', wrong advice for it."""
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    stacked = build(points_per_side=None, point_grids=np.stack([CENTRE, CENTRE]), crop_n_layers=1)
    listed = build(points_per_side=None, point_grids=[CENTRE, CENTRE], crop_n_layers=1)
    assert torch.equal(stacked(images), listed(images))
