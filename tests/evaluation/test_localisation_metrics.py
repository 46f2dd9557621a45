import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import f1_score, jaccard_score

from ctc_plugin.evaluation.localisation import (
    binarize,
    f1,
    iou,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)


def square_mask(h=8, w=8, top=2, left=2, size=3):
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    mask[0, top : top + size, left : left + size] = True
    return mask


def test_pointing_game_hand_made():
    mask = square_mask()
    inside = torch.zeros(1, 1, 8, 8)
    inside[0, 0, 3, 3] = 1.0
    outside = torch.zeros(1, 1, 8, 8)
    outside[0, 0, 7, 7] = 1.0
    assert pointing_game(inside, mask).item() == 1.0
    assert pointing_game(outside, mask).item() == 0.0
    # (7, 7) is two pixels from the square's corner (4, 4)... three: Chebyshev distance 3
    assert pointing_game(outside, mask, tolerance=2).item() == 0.0
    assert pointing_game(outside, mask, tolerance=3).item() == 1.0


def test_a_map_without_a_positive_value_points_nowhere():
    """0 everywhere but a negative blob away from the evidence scored a hit (the 0s on the
    evidence tied for the maximum); one 1e-9 pixel elsewhere turned it into a miss."""
    mask = square_mask()
    blob = torch.zeros(1, 1, 8, 8)
    blob[0, 0, 6:, 6:] = -1.0
    assert pointing_game(blob, mask).item() == 0.0
    assert pointing_game(blob - 1.0, mask).item() == 0.0  # all negative, its top on the square
    blob[0, 0, 3, 3] = 1e-9
    assert pointing_game(blob, mask).item() == 1.0


def test_empty_mask_is_nan():
    maps = torch.rand(2, 1, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[1, 0, 0] = True
    for metric in (pointing_game, relevance_mass_accuracy, relevance_rank_accuracy):
        out = metric(maps, masks)
        assert torch.isnan(out[0]) and not torch.isnan(out[1])


def test_relevance_mass_hand_made():
    mask = square_mask()
    maps = torch.zeros(1, 8, 8)
    maps[0, 3, 3] = 3.0  # inside
    maps[0, 0, 0] = 1.0  # outside
    maps[0, 7, 7] = -4.0  # negative, outside
    assert relevance_mass_accuracy(maps, mask).item() == pytest.approx(0.75)
    # the signed total is zero: the ratio is undefined
    assert np.isnan(relevance_mass_accuracy(maps, mask, positive_only=False).item())


def test_relevance_mass_signed_sum():
    mask = square_mask()
    maps = torch.zeros(1, 8, 8)
    maps[0, 3, 3] = 3.0
    maps[0, 7, 7] = -1.0
    assert relevance_mass_accuracy(maps, mask, positive_only=False).item() == pytest.approx(1.5)


def test_relevance_rank_hand_made():
    mask = square_mask(size=2)  # 4 pixels
    maps = torch.zeros(1, 8, 8)
    maps[0, 2, 2], maps[0, 2, 3], maps[0, 3, 2] = 5.0, 4.0, 3.0  # three inside
    maps[0, 6, 6] = 4.5  # one outside in the top 4
    assert relevance_rank_accuracy(maps, mask).item() == pytest.approx(0.75)


def test_relevance_rank_splits_ties_at_the_kth_value_by_their_share_inside():
    mask = square_mask(size=2)  # 4 pixels at rows 2-3, columns 2-3
    maps = torch.zeros(1, 8, 8)
    maps[0, 2, 2] = 5.0  # one inside above the tie
    maps[0, 2, 3] = maps[0, 3, 2] = maps[0, 0, 0] = maps[0, 7, 7] = 2.0  # 2 of 4 tied inside
    # three places of the top 4 left to four tied pixels, half of them inside: 1 + 3/2 of 4
    assert relevance_rank_accuracy(maps, mask).item() == pytest.approx(2.5 / 4)
    constant = torch.ones(1, 8, 8)  # every pixel tied: the evidence's share of the image
    assert relevance_rank_accuracy(constant, mask).item() == pytest.approx(4 / 64)


def test_relevance_rank_of_a_map_constant_over_segments_does_not_change_when_flipped():
    """The top-left quarter of a segment that covers the left half: pixel order gave 1 or 0."""
    maps = torch.zeros(1, 8, 8)
    maps[0, :, :4] = 1.0
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, :4, :4] = True
    upright = relevance_rank_accuracy(maps, mask).item()
    flipped = relevance_rank_accuracy(maps.flip(1), mask.flip(1)).item()
    assert upright == flipped == pytest.approx(0.5)


def test_binarize_and_overlap_hand_made():
    maps = torch.tensor([[[0.0, 1.0], [0.6, 0.4]]])
    pred = binarize(maps, 0.5)
    assert pred.tolist() == [[[False, True], [True, False]]]
    truth = torch.tensor([[[False, True], [False, True]]])
    assert iou(pred, truth).item() == pytest.approx(1 / 3)
    assert f1(pred, truth).item() == pytest.approx(0.5)
    assert binarize(maps, 0.5, mode="quantile").sum().item() == 2


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="must have shape"):
        pointing_game(torch.rand(4, 4), torch.ones(4, 4))
    with pytest.raises(ValueError, match="to match the attributions"):
        pointing_game(torch.rand(2, 4, 4), torch.ones(2, 5, 4))
    with pytest.raises(ValueError, match="NaN"):
        pointing_game(torch.full((1, 2, 2), float("nan")), torch.ones(1, 2, 2))


def quantus_scores(metric, maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    n, h, w = maps.shape
    x = np.zeros((n, 3, h, w), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = metric(
            model=None,
            x_batch=x,
            y_batch=np.zeros(n, dtype=int),
            a_batch=maps[:, None].astype(np.float32),
            s_batch=masks[:, None].astype(np.float32),
        )
    return np.asarray(scores, dtype=float)


maps_strategy = arrays(
    np.float32,
    (3, 6, 6),
    elements=st.floats(0.0009765625, 1.0, width=32),
    unique=True,  # distinct values: the metrics agree on tie-breaking only without ties
)
masks_strategy = arrays(np.bool_, (3, 6, 6)).filter(lambda m: m.reshape(3, -1).any(1).all())


@settings(max_examples=25, deadline=None)
@given(maps=maps_strategy, masks=masks_strategy)
def test_agrees_with_quantus(maps, masks):
    quantus = pytest.importorskip("quantus")  # an extra (bench)
    kw = {"disable_warnings": True, "normalise": False, "abs": False}
    ours = pointing_game(maps, masks).numpy()
    np.testing.assert_allclose(ours, quantus_scores(quantus.PointingGame(**kw), maps, masks))
    ours = relevance_mass_accuracy(maps, masks, positive_only=False).numpy()
    theirs = quantus_scores(quantus.RelevanceMassAccuracy(**kw), maps, masks)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    ours = relevance_rank_accuracy(maps, masks).numpy()
    theirs = quantus_scores(quantus.RelevanceRankAccuracy(**kw), maps, masks)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    pred=arrays(np.bool_, (2, 5, 5)),
    truth=arrays(np.bool_, (2, 5, 5)).filter(lambda m: m.reshape(2, -1).any(1).all()),
)
def test_overlap_agrees_with_sklearn(pred, truth):
    for i in range(2):
        expected_iou = jaccard_score(truth[i].ravel(), pred[i].ravel(), zero_division=0)
        expected_f1 = f1_score(truth[i].ravel(), pred[i].ravel(), zero_division=0)
        assert iou(pred, truth)[i].item() == pytest.approx(expected_iou)
        assert f1(pred, truth)[i].item() == pytest.approx(expected_f1)


@pytest.mark.parametrize("value", [0.0, 0.3, -1.0])
def test_constant_map_points_nowhere(value):
    """A constant (e.g. all-zero) map has no maximum: a miss, not a hit on every mask."""
    maps = torch.full((2, 1, 8, 8), value)
    masks = torch.stack([square_mask()[0], torch.ones(8, 8, dtype=torch.bool)])
    assert pointing_game(maps, masks).tolist() == [0.0, 0.0]
    assert pointing_game(maps, masks, tolerance=3).tolist() == [0.0, 0.0]
    tied = torch.zeros(1, 8, 8)
    tied[0, 2:4, 2:4] = 1.0  # a tie for the maximum that is not the whole map still hits
    assert pointing_game(tied, square_mask()).item() == 1.0
