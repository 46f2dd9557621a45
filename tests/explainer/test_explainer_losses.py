"""Each loss term against hand-computed values and independent re-implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin.explainer import losses

BIG = 1000.0  # sigmoid(+-1000) is exactly 1 / 0 in float32


def test_target_masks_match_a_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, generator=g)
    targets = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])
    m, n = losses.target_masks(logits, targets)
    for i in range(2):
        present = [c for c in range(4) if targets[i, c] == 1]
        absent = [c for c in range(4) if targets[i, c] == 0]
        expected_m = torch.stack([logits[i, c] for c in present]).max(0).values.sigmoid()
        expected_n = torch.stack([logits[i, c] for c in absent]).max(0).values.sigmoid()
        torch.testing.assert_close(m[i], expected_m)
        torch.testing.assert_close(n[i], expected_n)


def test_target_masks_need_a_present_class():
    with pytest.raises(ValueError, match="present class"):
        losses.target_masks(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3))


def test_entropy_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    expected = (0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / 2
    assert losses.entropy_loss(logits).item() == pytest.approx(expected, rel=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=2, max_size=8))
def test_entropy_is_smallest_at_the_uniform_prediction(values):
    c = len(values)
    uniform = losses.entropy_loss(torch.zeros(1, c)).item()
    assert uniform == pytest.approx(-math.log(c) / c, rel=1e-6)
    assert losses.entropy_loss(torch.tensor([values])).item() >= uniform - 1e-7


def _tv_reference(mask: torch.Tensor) -> torch.Tensor:
    """The original's formulation: 3x3 difference filters with reflect padding."""
    right = torch.tensor([[0.0, 0, 0], [0, 1, -1], [0, 0, 0]]).view(1, 1, 3, 3)
    down = torch.tensor([[0.0, 0, 0], [0, 1, 0], [0, -1, 0]]).view(1, 1, 3, 3)
    x = F.pad(mask.unsqueeze(1), (1, 1, 1, 1), mode="reflect")
    return (F.conv2d(x, right).abs() + F.conv2d(x, down).abs()).mean()


def test_tv_by_hand():
    mask = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    # right differences |0-1|, |1-0| (reflected) on both rows; down differences all zero
    assert losses.total_variation(mask).item() == pytest.approx(1.0)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 7), st.integers(2, 7), st.integers(0, 1000), st.floats(0, 1))
def test_tv_matches_the_original_filter_and_is_zero_for_constants(h, w, seed, value):
    mask = torch.rand(2, h, w, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(losses.total_variation(mask), _tv_reference(mask))
    assert losses.total_variation(torch.full((2, h, w), value)).item() == 0.0


def _logits_with_on_pixels(on: int, h: int = 10, w: int = 10) -> torch.Tensor:
    flat = torch.full((h * w,), -BIG)
    flat[:on] = BIG
    return flat.view(1, 1, h, w)


@pytest.mark.parametrize("on", [5, 17, 30])
def test_area_hinge_is_exactly_zero_between_the_bounds(on):
    # 10 x 10 image: a_min = 0.05 -> 5 pixels, a_max = 0.3 -> 30 pixels
    logits = _logits_with_on_pixels(on)
    loss = losses.area_loss(logits, torch.ones(1, 1), a_min=0.05, a_max=0.3)
    assert loss.item() == 0.0


@pytest.mark.parametrize(
    ("on", "expected"), [(4, 1 / 100), (0, 5 / 100), (31, 1 / 100), (100, 70 / 100)]
)
def test_area_hinge_by_hand(on, expected):
    logits = _logits_with_on_pixels(on)
    loss = losses.area_loss(logits, torch.ones(1, 1), a_min=0.05, a_max=0.3)
    assert loss.item() == pytest.approx(expected)


def test_area_hinge_uses_the_actual_image_size_and_sums_present_classes():
    # 20 x 20: a_min = 0.05 -> 20 pixels; 19 on pixels miss one (1/400) in each present class
    one = _logits_with_on_pixels(19, 20, 20)[0, 0]
    logits = torch.stack([one, one, one]).unsqueeze(0).repeat(2, 1, 1, 1)
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    loss = losses.area_loss(logits, targets, a_min=0.05, a_max=0.3)
    assert loss.item() == pytest.approx((2 / 400 + 1 / 400) / 2)


def test_area_hinge_on_soft_masks_matches_a_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 5, generator=g)
    targets = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    total = 0.0
    for i in range(2):
        for c in range(3):
            if targets[i, c]:
                s = sorted(logits[i, c].flatten().sigmoid().tolist(), reverse=True)
                low, high = int(0.1 * 20), int(0.5 * 20)
                total += (
                    sum(
                        max(float(k < low) - v, 0) + max(v - float(k < high), 0)
                        for k, v in enumerate(s)
                    )
                    / 20
                )
    loss = losses.area_loss(logits, targets, a_min=0.1, a_max=0.5)
    assert loss.item() == pytest.approx(total / 2, rel=1e-5)


def test_classification_loss_by_hand():
    logits = torch.zeros(1, 2)
    single = losses.classification_loss(logits, torch.tensor([[1.0, 0.0]]), multilabel=False)
    multi = losses.classification_loss(logits, torch.tensor([[1.0, 1.0]]), multilabel=True)
    assert single.item() == pytest.approx(math.log(2))
    assert multi.item() == pytest.approx(math.log(2))


def test_apply_mask_and_mean_area():
    images = torch.ones(1, 3, 2, 2)
    mask = torch.tensor([[[1.0, 0.0], [0.5, 0.25]]])
    out = losses.apply_mask(images, mask, baseline=0.5)
    torch.testing.assert_close(out[0, 1], torch.tensor([[1.0, 0.5], [0.75, 0.625]]))
    assert losses.mean_area(mask).item() == pytest.approx(0.4375)
