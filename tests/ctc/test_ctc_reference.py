"""The "reference" bias sharing against an independent NumPy re-implementation and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import FeatureAblation
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.boxes import packed_volume, rounded_extent, size_groups, support_boxes
from ctc_plugin.ctc.fused_sharing import FusedReferenceSharing
from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.sharing import ReferenceSharing
from ctc_plugin.ctc.speedups import SPEC, Speedups
from ctc_plugin.testing import random_partition
from tests.ctc.test_sparse import sam_like_mask
from tests.strategies import cases


def _q(u):
    return np.ceil(u * 10.0) / 10.0


def _shares(z_copy: np.ndarray, z_full: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Research note section 2, written out literally for one group of units (NumPy, loops)."""
    qf = _q(z_full)
    rho = np.zeros_like(z_copy)
    for i in np.ndindex(z_copy.shape):
        # q(z_k) / q(z_F) = a / b with whole numbers a, b; ceil(1000 |a / b|) in exact arithmetic
        a, b = math.ceil(10.0 * z_copy[i]), math.ceil(10.0 * z_full[i])
        if b != 0:
            rho[i] = -(-1000 * abs(a) // abs(b)) / 1000.0
    ell = np.where(rho > 0, np.log10(np.where(rho > 0, rho, 1.0)), 0.0)
    n = qf + bias
    r = np.ceil(1000.0 * np.abs(n / n.mean())) / 1000.0
    sigma = np.log10(r[r > 0]).std()
    valid = (z_copy != 0) | (z_full == 0)
    mu = ell[valid].mean() if valid.any() else 0.0
    std = ell[valid].std() if valid.any() else 0.0
    if std > sigma:
        ell = mu + (ell - mu) * sigma / std
    return np.where(rho > 0, 10.0**ell, 0.0)


def numpy_reference_ctc(model: nn.Sequential, x: torch.Tensor, masks: list, target: int):
    """Scores of CTC 'reference' for a Sequential of Conv2d/ReLU/MaxPool2d/Flatten/Linear."""
    copies = [x[0].numpy()] + [(x[0] * m).numpy() for m in masks]  # copy 0 = M_F
    original = x
    for layer in model:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            bias = layer.bias.detach().numpy()
            zs = []
            for a in copies:
                t = torch.from_numpy(a).unsqueeze(0)
                z = (layer(t) - layer.bias.view(-1, *([1] * (t.dim() - 2)))).detach()[0].numpy()
                zs.append(z)
            new = []
            for z in zs:
                out = np.empty_like(z)
                if isinstance(layer, nn.Conv2d):
                    for c in range(z.shape[0]):  # per channel over positions
                        out[c] = z[c] + bias[c] * _shares(z[c], zs[0][c], bias[c])
                else:  # over all units
                    out = z + bias * _shares(z, zs[0], bias)
                new.append(out)
            copies = new
        elif isinstance(layer, nn.ReLU):
            gate = (original[0] > 0).numpy()
            copies = [a * gate for a in copies]
        elif isinstance(layer, nn.MaxPool2d):
            _, idx = F.max_pool2d(original, layer.kernel_size, layer.stride, return_indices=True)
            idx = idx[0].numpy()
            copies = [
                np.take_along_axis(
                    a.reshape(a.shape[0], -1), idx.reshape(idx.shape[0], -1), 1
                ).reshape(idx.shape)
                for a in copies
            ]
        elif isinstance(layer, nn.Flatten):
            copies = [a.reshape(-1) for a in copies]
        else:
            raise TypeError(layer)
        original = layer(original)
    y = original[0, target].item()
    full = copies[0][target]
    return np.array([y * c[target] / full for c in copies[1:]])


def _quadrants(size: int) -> torch.Tensor:
    """Four compact features (the image's quadrants) as a (1, 1, size, size) label map."""
    half = torch.arange(size) >= size // 2
    return (half.view(-1, 1).long() * 2 + half.view(1, -1).long()).view(1, 1, size, size)


@pytest.mark.parametrize(
    "speedups, compact",
    [
        (Speedups(block_elements=1, packed_boxes=0.0), False),  # every copy its own block
        (Speedups(packed_boxes=0.0), False),
        (Speedups(packed_boxes=1.0), True),  # compact features computed on their boxes
        (SPEC, False),
        (SPEC, True),
    ],
)
@pytest.mark.parametrize("seed", range(6))
def test_reference_matches_an_independent_numpy_implementation(seed, speedups, compact):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 6),
        nn.ReLU(),
        nn.Linear(6, 3),
    ).double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64) * 2
    # scattered features, or compact ones whose copies are computed on their boxes
    labels = _quadrants(8) if compact else torch.randint(0, 4, (1, 1, 8, 8))
    masks = [(labels[0, 0] == k).double() for k in range(4)]
    target = seed % 3
    ctc = CTC(model, bias_sharing="reference")
    ctc._speedups = speedups
    _, scores = ctc.attribute(x, target=target, feature_mask=labels, return_feature_scores=True)
    expected = numpy_reference_ctc(model, x, masks, target)
    np.testing.assert_allclose(scores.scores[0].numpy(), expected, rtol=1e-7, atol=1e-9)


def _two_layer_net() -> nn.Sequential:
    first, second = nn.Linear(2, 2), nn.Linear(2, 1)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        first.bias.copy_(torch.tensor([0.5, 0.5]))
        second.weight.copy_(torch.tensor([[1.0, 1.0]]))
        second.bias.copy_(torch.tensor([0.2]))
    return nn.Sequential(first, nn.ReLU(), second).double()


X = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
FEATURES = torch.tensor([[0, 1]])  # feature 0 = x0 = 1, feature 1 = x1 = 2


def _scores(mode: str) -> torch.Tensor:
    _, scores = CTC(_two_layer_net(), bias_sharing=mode).attribute(
        X, target=0, feature_mask=FEATURES, return_feature_scores=True
    )
    return scores.scores[0]


def test_two_layer_example_by_hand_none():
    # z1 = W1 x: feature 0 -> (1, 1), feature 1 -> (2, -2); original pre-activation (3.5, -0.5)
    # gates (1, 0); output = z of unit 0 only.
    torch.testing.assert_close(_scores("none"), torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_two_layer_example_by_hand_proportional():
    # unit 0: shares 1/3, 2/3 of b=0.5 -> 1 + 1/6, 2 + 1/3 (unit 1 is gated off)
    # output layer: z = 7/6, 7/3 -> shares 1/3, 2/3 of 0.2
    expected = torch.tensor([7 / 6 + 0.2 / 3, 7 / 3 + 0.4 / 3], dtype=torch.float64)
    torch.testing.assert_close(_scores("proportional"), expected)
    assert _scores("proportional").sum().item() == pytest.approx(3.7)


def test_two_layer_example_by_hand_reference():
    # Layer 1, full copy z_F = (3, -1); q(z_F) = (3, -1); n = q(z_F) + b = (3.5, -0.5),
    # mean(n) = 1.5, r = ceil(1000 |n / 1.5|) / 1000 = (2.334, 0.334),
    # sigma = std(log10 r) = (log10 2.334 - log10 0.334) / 2.
    sigma = (math.log10(2.334) - math.log10(0.334)) / 2
    # feature 0: z = (1, 1): rho = (ceil(333.33)/1000, 1) = (0.334, 1), l = (log10 .334, 0)
    l0 = [math.log10(0.334), 0.0]
    std0 = abs(l0[0]) / 2
    assert std0 < sigma  # no capping: s = rho
    unit0_f0 = 1 + 0.5 * 0.334
    # feature 1: z = (2, -2): rho = (ceil(666.67)/1000, 2) = (0.667, 2)
    l1 = [math.log10(0.667), math.log10(2.0)]
    std1 = abs(l1[1] - l1[0]) / 2
    assert std1 < sigma
    unit0_f1 = 2 + 0.5 * 0.667
    # the full copy: rho = 1 everywhere -> s = 1: unit 0 = 3.5 (unit 1 gated off)
    full0 = 3.5

    # Layer 2 (dense, one unit): z_F = 3.5, b = 0.2; n = 3.7, r = 1, sigma = 0
    # feature k: rho = ceil(1000 |q(z_k) / 3.5|) / 1000, a single unit -> std 0, no capping
    def out(z):
        q = math.ceil(10 * z) / 10
        rho = math.ceil(1000 * abs(q / 3.5)) / 1000
        return z + 0.2 * rho

    full = out(full0)  # = 3.7
    y = 3.7  # the model's real output
    expected = torch.tensor(
        [y * out(unit0_f0) / full, y * out(unit0_f1) / full], dtype=torch.float64
    )
    torch.testing.assert_close(_scores("reference"), expected)


def test_with_a_baseline_the_scores_and_its_share_add_up_to_the_output():
    """The reference full copy is ``x - baseline``: the rescaling takes it together with the
    baseline's copy to the output, so the baseline is not counted twice."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = random_partition(8, 8, 5)
    baselines = 0.5
    # no bias: nothing is shared, so every copy's output is the linear map's, as in occlusion
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4, bias=False)).double().eval()
    scores = CTC(linear, bias_sharing="reference").attribute(
        x, 1, feature_mask=mask, baselines=baselines
    )
    occlusion = FeatureAblation(linear).attribute(x, baselines, 1, feature_mask=mask)
    torch.testing.assert_close(scores, occlusion)
    # with biases and gates the formula is not conservative, but one feature that covers the
    # image is the reference full copy itself: it and the baseline's share give the output
    net = (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
        )
        .double()
        .eval()
    )
    _, result = CTC(net, bias_sharing="reference").attribute(
        x,
        2,
        feature_mask=torch.zeros(1, 1, 8, 8, dtype=torch.long),
        baselines=baselines,
        return_feature_scores=True,
    )
    torch.testing.assert_close(result.scores[:, 0] + result.baseline, result.output)
    assert (result.baseline.abs() > 1e-3 * result.output.abs()).all()


@settings(max_examples=20, deadline=None)
@given(cases(), st.integers(1, 3), st.booleans())
def test_blockwise_shares_equal_the_whole_layer_computation(case, copies_per_block, baseline):
    """Blocks of a few copies (the eager path) give the values of one whole-layer computation."""
    model, x, mask, target = case
    baselines = 0.2 * torch.ones_like(x[:1]) if baseline else None
    whole, blocks = CTC(model), CTC(model)
    whole._speedups = Speedups(block_elements=1 << 62)
    blocks._speedups = Speedups(block_elements=copies_per_block * x[0].numel())  # that many copies
    expected = whole.attribute(x, target=target, feature_mask=mask, baselines=baselines)
    actual = blocks.attribute(x, target=target, feature_mask=mask, baselines=baselines)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7)


@settings(max_examples=15, deadline=None)
@given(cases())
def test_boxed_path_gives_the_whole_layer_values_on_random_architectures(case):
    """Compact features (quadrants) through BatchNorm, residual and concatenating nets."""
    model, x, _, target = case
    mask = _quadrants(x.shape[-1])
    boxed, whole = CTC(model, bias_sharing="reference"), CTC(model, bias_sharing="reference")
    boxed._speedups, whole._speedups = Speedups(packed_boxes=1.0), Speedups(packed_boxes=0.0)
    expected = whole.attribute(x, target=target, feature_mask=mask)
    actual = boxed.attribute(x, target=target, feature_mask=mask)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10)


@settings(max_examples=10, deadline=None)
@given(cases())
def test_the_one_block_path_of_other_devices_gives_the_cpu_values(case):
    """The GPU path (the whole layer as one block, no boxes), run on the CPU here."""
    model, x, mask, target = case
    cpu_path, one_block = CTC(model), CTC(model)
    one_block._speedups = Speedups(block_elements=None)
    expected = cpu_path.attribute(x, target=target, feature_mask=mask)
    actual = one_block.attribute(x, target=target, feature_mask=mask)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10)


def test_blockwise_shares_equal_the_spec():
    """The spec's shares of a whole grouped layer equal the blocks of the fused sharing."""
    torch.manual_seed(0)
    z = torch.randn(2, 7, 3, 5, 5, dtype=torch.float64)
    z[0, 3, 1] = 0.0  # a copy with an empty channel
    z[1, 0, 2, :2] = 0.0  # the full copy exactly zero somewhere
    bias = torch.randn(3, 1, 1, dtype=torch.float64)
    grouped = torch.cat([torch.zeros_like(z[:, :1]), z], 1)  # gate copy first
    layout = CopyLayout(examples=2, features=6, reference_full=True, baseline=False)
    expected = ReferenceSharing().add_bias(grouped, bias, layout)
    sharing = FusedReferenceSharing(block_elements=2 * z[0, 0].numel())
    sharing.add_bias(grouped, bias, layout)
    torch.testing.assert_close(grouped, expected, rtol=1e-12, atol=1e-12)


def test_support_boxes_are_the_smallest_boxes_around_the_nonzero_values():
    torch.manual_seed(0)
    copies = torch.zeros(1, 4, 3, 6, 7, dtype=torch.float64)
    copies[0, 0, 1, 2:4, 3:6] = torch.rand(2, 3) + 0.5
    copies[0, 1, 0, 5, 0] = 1e-300  # a single tiny value in one channel
    copies[0, 2, 0, 1, 1], copies[0, 2, 1, 1, 1] = 1.0, -1.0  # cancels in a channel sum
    # copy 3 stays zero everywhere
    boxes = support_boxes(copies, (3, 4))
    assert boxes == [
        (slice(2, 4), slice(3, 6)),
        (slice(5, 6), slice(0, 1)),
        (slice(1, 2), slice(1, 2)),
        None,
    ]


def _boxed_and_whole(dtype, mask, packed_boxes):
    """Scores of a small BatchNorm CNN with the packed boxes (``packed_boxes``) and without,
    and what ``_small_boxes`` chose in each layer of the boxed call."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].bias.uniform_(-0.5, 0.5)
    model = model.eval().to(dtype)
    x = torch.rand(2, 3, 32, 32, dtype=dtype)
    boxed, whole = CTC(model, bias_sharing="reference"), CTC(model, bias_sharing="reference")
    # torch's packed boxes (the compiled formula works on each copy's box in place)
    boxed._speedups = Speedups(packed_boxes=packed_boxes, native_formula=False)
    whole._speedups = Speedups(packed_boxes=0.0, native_formula=False)
    chosen = []
    small_boxes = boxed._sharing()._small_boxes
    boxed._sharing()._small_boxes = lambda *a: chosen.append(small_boxes(*a)) or chosen[-1]
    _, expected = whole.attribute(x, target=1, feature_mask=mask, return_feature_scores=True)
    _, actual = boxed.attribute(x, target=1, feature_mask=mask, return_feature_scores=True)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(actual.scores, expected.scores, rtol=tolerance, atol=tolerance)
    return chosen


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_copies_computed_on_their_boxes_give_the_whole_layer_values(dtype):
    """Compact features take the boxed path in the first layers; the scores do not change."""
    grid = (torch.arange(32) // 8).view(-1, 1) * 4 + (torch.arange(32) // 8).view(1, -1)
    chosen = _boxed_and_whole(dtype, grid.view(1, 1, 32, 32), 1.0)  # 16 compact features
    assert any(boxes for boxes in chosen), "the boxed path did not run"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_background_segment_is_packed_apart_from_the_small_features(dtype):
    """SAM-like features: the background's box is the whole map, the others small.

    Packed together at the largest size they would take every copy's whole map (refused at
    ``packed_boxes=0.5``); in groups by size the background is one whole-map slot and the
    small ones a block of their own, and the scores equal the whole-layer computation.
    """
    chosen = _boxed_and_whole(dtype, sam_like_mask(32, seed=1), 0.5)
    whole_map = (slice(0, 32), slice(0, 32))
    apart = [
        groups
        for groups in chosen
        if groups and len(groups) > 1 and any(box == whole_map for _, box in groups[0])
    ]
    assert apart, f"no layer packed the background apart: {chosen}"
    assert all(box == whole_map for _, box in apart[0][0])
    assert all(box != whole_map for group in apart[0][1:] for _, box in group)


def test_boxes_are_grouped_by_rounded_size_and_packed_per_group():
    boxes = [
        (slice(0, 16), slice(0, 16)),  # the whole 16 x 16 map
        (slice(0, 2), slice(0, 2)),
        None,
        (slice(5, 6), slice(9, 11)),  # 1 x 2 rounds to 2 x 2 (steps of 16 / 8 = 2)
        (slice(3, 8), slice(0, 2)),  # 5 x 2 rounds to 6 x 2
    ]
    groups = size_groups(boxes, (16, 16))
    assert groups == [[0], [1, 3], [4]]
    assert packed_volume(boxes, groups) == 256 + 2 * 2 * 2 + 5 * 2
    assert packed_volume(boxes, [[0, 1, 3, 4]]) == 4 * 256  # one block at the largest size
    assert size_groups([None, None], (16, 16)) == [] and packed_volume([None], []) == 0
    assert [rounded_extent(e, 16) for e in (1, 2, 3, 15, 16)] == [2, 2, 4, 16, 16]
    assert rounded_extent(3, 7) == 3 and rounded_extent(3, 7, steps=2) == 4
