"""Localisation metrics refuse arguments that would give a meaningless score."""

import math

import pytest
import torch

from ctc_plugin.evaluation.localisation import binarize, f1, iou, pointing_game


def evidence():
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 2:4, 2:4] = True
    return mask


@pytest.mark.parametrize("tolerance", [1.5, 2.0, True, "2"])
def test_pointing_game_tolerance_must_be_an_int(tolerance):
    """2.0 was refused as "not a whole number", which it is; the message asks for an int."""
    with pytest.raises(ValueError, match="tolerance must be an int number of pixels"):
        pointing_game(torch.rand(2, 8, 8), evidence(), tolerance=tolerance)


@pytest.mark.parametrize("metric", [iou, f1])
def test_overlap_refuses_an_unthresholded_map(metric):
    maps = torch.rand(2, 8, 8) + 0.01  # no zero: read as a mask it would cover everything
    with pytest.raises(ValueError, match=r"binarize"):
        metric(maps, evidence())


@pytest.mark.parametrize("metric", [iou, f1])
def test_overlap_takes_boolean_and_zero_one_masks(metric):
    maps = torch.rand(2, 8, 8)
    predicted = binarize(maps, 0.5)
    expected = metric(predicted, evidence())
    assert torch.equal(metric(predicted.float(), evidence()), expected)
    assert torch.equal(metric(predicted.to(torch.uint8) * 255, evidence()), expected)
    assert torch.equal(metric(predicted.numpy(), evidence()), expected)


def test_binarize_of_no_images_is_empty_in_both_modes():
    for mode in ("relative", "quantile"):
        assert binarize(torch.rand(0, 8, 8), 0.5, mode=mode).shape == (0, 8, 8)


@pytest.mark.parametrize("bad", [float("nan"), 0.5], ids=["nan", "soft"])
@pytest.mark.parametrize("metric", [pointing_game, iou, f1])
def test_ground_truth_masks_of_other_values_than_0_and_1_are_refused(metric, bad):
    masks = torch.zeros(2, 8, 8)
    masks[:, 2:4, 2:4] = 1.0
    masks[1, 6, 6] = bad  # read as non-zero, it counted as evidence
    maps = torch.zeros(2, 8, 8, dtype=torch.bool)
    maps[:, 2, 2] = True
    with pytest.raises(ValueError, match=r"masks must be masks .*masks > 0.5"):
        metric(maps.float() if metric is pointing_game else maps, masks)
    masks[1, 6, 6] = 0.0
    assert metric(maps.float() if metric is pointing_game else maps, masks).isfinite().all()


def test_channels_last_maps_are_refused_with_the_permutation():
    """(N, H, W, C) maps were read as channels-first, summed over H, and the masks blamed."""
    from ctc_plugin.evaluation.localisation import pointing_game

    with pytest.raises(ValueError, match=r"look channels-last .*permute\(0, 3, 1, 2\)"):
        pointing_game(torch.rand(2, 8, 8, 3), torch.ones(2, 8, 8, dtype=torch.bool))


@pytest.mark.parametrize("metric", [iou, f1])
def test_nan_predicted_masks_are_named_as_such(metric):
    predicted = torch.full((2, 8, 8), math.nan)
    with pytest.raises(ValueError, match="^predicted contain NaN"):
        metric(predicted, torch.ones(2, 8, 8, dtype=torch.bool))
