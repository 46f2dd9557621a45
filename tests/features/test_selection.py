"""Relevance-guided selection: each step against an independent version, plus edge cases."""

from __future__ import annotations

import jenkspy
import numpy as np
import pytest
import torch
from captum.attr import InputXGradient
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin.features import SelectionConfig, select_features
from ctc_plugin.features.selection import (
    cluster_agreement,
    cluster_relevant_pixels,
    relevant_pixels,
)


def grid_partition(size: int = 32, cells: int = 4) -> torch.Tensor:
    index = torch.arange(size) * cells // size
    return index[:, None] * cells + index[None, :]


def blob_relevance(size: int = 32, top: int = 8, left: int = 16, side: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    relevance = 0.01 * torch.rand(size, size, generator=generator)
    blob = 1.0 + 0.1 * torch.rand(side, side, generator=generator)
    relevance[top : top + side, left : left + side] += blob
    return relevance


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.sampled_from([16, 24]), signed=st.booleans())
def test_relevant_pixels_match_a_direct_loop(seed, size, signed):
    rng = np.random.default_rng(seed)
    relevance = rng.gamma(0.5, size=(size, size))
    if signed:  # negative evidence too (Integrated Gradients, LRP with beta > 0)
        relevance -= 2 * rng.gamma(0.5, size=(size, size))
    config = SelectionConfig()
    got = relevant_pixels(relevance, config)
    percentile = np.percentile(relevance, 95)
    cell = int(np.ceil(size / 4))
    expected = np.zeros_like(got)
    for y in range(size):
        for x in range(size):
            block = relevance[
                (y // cell) * cell : (y // cell + 1) * cell,
                (x // cell) * cell : (x // cell + 1) * cell,
            ]
            cut = jenkspy.jenks_breaks(block.ravel(), n_classes=6)[-5]  # the reference's index
            expected[y, x] = relevance[y, x] > cut and relevance[y, x] > percentile
    np.testing.assert_array_equal(got, expected)


def test_strong_negative_evidence_is_not_selected():
    """A block of relevance -5 lies far below the 95th percentile: a signed heatmap's
    negative evidence is not taken for relevant pixels, its positive spot is."""
    relevance = 0.01 * torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(1))
    relevance[0, :8, :8] = -5.0
    relevance[0, 26:30, 26:30] = 3.0
    keep = relevant_pixels(relevance[0].numpy(), SelectionConfig())
    assert not keep[:8, :8].any() and keep[26:30, 26:30].all()
    x = torch.full((1, 3, 32, 32), 0.5)
    selection = select_features(
        grid_partition()[None, None],
        x,
        relevance=relevance,
        config=SelectionConfig(k=1, min_samples=5),
    )
    assert selection.selected[0].tolist() == [15]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_cluster_agreement_matches_the_formula(seed):
    rng = np.random.default_rng(seed)
    partition = rng.integers(0, 5, size=(10, 10))
    partition[0, :5] = np.arange(5)  # every id present
    clusters = rng.integers(-1, 3, size=(10, 10))
    got = cluster_agreement(partition, clusters)
    for feature in range(5):
        s = partition == feature
        best = 0.0
        for cluster in range(int(clusters.max()) + 1):
            c = clusters == cluster
            if c.any():
                both = (s & c).sum()
                best = max(best, 0.5 * (both / s.sum() + both / c.sum()))
        assert got[feature] == pytest.approx(best)


def test_no_cluster_scores_zero():
    assert cluster_agreement(np.zeros((3, 3), int), np.full((3, 3), -1)).tolist() == [0.0]


def test_dbscan_search_is_bounded_and_warns(dbscan_fits):
    fits = dbscan_fits
    relevance = blob_relevance().numpy()
    keep = np.zeros((32, 32), bool)
    keep[::2, ::2] = True  # sparse points: never one tidy cluster with 0 clusters allowed
    rgb = np.zeros((32, 32, 3))
    config = SelectionConfig(max_clusters=0, max_search_steps=5)
    _, converged = cluster_relevant_pixels(keep, relevance, rgb, config)
    assert not converged and len(fits) == 5
    assert [f["eps"] for f in fits] == [12.0, 13.0, 14.0, 15.0, 16.0]
    assert [f["min_samples"] for f in fits] == [20, 22, 24, 26, 28]
    partition = grid_partition()[None, None]
    image = torch.zeros(1, 3, 32, 32)
    with pytest.warns(RuntimeWarning, match="did not reach") as caught:
        select_features(partition, image, blob_relevance()[None], config=config)
    assert caught[0].filename == __file__  # the warning points at the caller's line


def test_the_relevant_feature_ranks_first_and_the_rest_is_merged():
    partition = grid_partition()[None, None]  # 16 cells of 8x8
    relevance = blob_relevance()[None]  # covers cell (1, 2), id 6
    images = torch.full((1, 3, 32, 32), 0.5)  # one colour: DBSCAN groups on position and relevance
    # a 32x32 image has only ~50 candidate pixels: start DBSCAN from a smaller min_samples
    details = select_features(partition, images, relevance, config=SelectionConfig(min_samples=5))
    assert details.selected[0][0] == 6
    mask = details.mask
    assert mask.shape == (1, 1, 32, 32)
    assert torch.equal(torch.unique(mask), torch.arange(10))  # 9 selected + 1 remainder
    assert torch.equal(mask[0, 0] == 0, partition[0, 0] == 6)
    # the remainder is exactly the union of the unselected cells
    unselected = ~torch.isin(partition[0, 0], torch.from_numpy(details.selected[0]))
    assert torch.equal(mask[0, 0] == 9, unselected)
    assert details.converged == [True]


def test_fewer_features_than_k_keeps_all_without_remainder():
    partition = grid_partition(cells=2)[None, None]
    relevance = blob_relevance()[None]
    mask = select_features(partition, torch.zeros(1, 3, 32, 32), relevance).mask
    assert torch.equal(torch.unique(mask), torch.arange(4))
    assert int(mask[0, 0, 10, 20]) == 0  # the blob's cell is first


def test_flat_relevance_does_not_crash_and_ranks_by_mean_relevance():
    partition = grid_partition()[None, None]
    relevance = torch.zeros(1, 32, 32)
    relevance[0, 24:, :8] = 0.5  # uniform in one cell: no pixel exceeds its cell's breaks
    details = select_features(
        partition, torch.zeros(1, 3, 32, 32), relevance, config=SelectionConfig(k=3)
    )
    assert details.selected[0][0] == 12
    assert torch.equal(torch.unique(details.mask), torch.arange(4))


def test_relevance_is_ordered_and_selection_respects_non_contiguous_ids():
    partition = grid_partition()[None, None] * 10 + 3  # ids 3, 13, 23, ...
    relevance = blob_relevance()[None]
    details = select_features(
        partition, torch.zeros(1, 3, 32, 32), relevance, config=SelectionConfig(k=2)
    )
    assert details.selected[0][0] == 63
    assert details.feature_ids[0].tolist() == list(range(3, 160, 10))


def test_batch_and_broadcast_masks():
    partition = grid_partition()[None, None]
    relevance = torch.stack([blob_relevance(), blob_relevance(top=16, left=0)])
    images = torch.zeros(2, 3, 32, 32)
    details = select_features(partition, images, relevance, config=SelectionConfig(k=1))
    assert details.mask.shape == (2, 1, 32, 32)
    assert [int(s[0]) for s in details.selected] == [6, 8]


def tiny_classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 3),
    ).eval()


@pytest.mark.filterwarnings("ignore:image .* DBSCAN search:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_relevance_methods_are_interchangeable():
    model = tiny_classifier()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    partition = grid_partition()[None, None]
    by_default = select_features(partition, images, model=model, target=1)
    assert by_default.relevance.shape == (2, 32, 32)
    captum = select_features(partition, images, InputXGradient(model), model=model, target=1)
    assert captum.mask.shape == (2, 1, 32, 32)

    def saliency(inputs, target):
        inputs = inputs.clone().requires_grad_(True)
        model(inputs).gather(1, target[:, None]).sum().backward()
        return inputs.grad.abs()

    by_callable = select_features(partition, images, saliency, model=model)
    assert by_callable.relevance.shape == (2, 32, 32)


def test_a_model_in_training_mode_is_refused_and_left_as_it_was():
    from ctc_plugin import zoo
    from ctc_plugin.inputs import TrainingModeError

    model = zoo.load("resnet").train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    index = torch.arange(96) * 4 // 96
    partition = (index[:, None] * 4 + index[None, :])[None, None]
    with pytest.raises(TrainingModeError, match="model.eval"):
        select_features(partition, images, model=model, target=1)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_bad_inputs_are_clear_errors():
    partition = grid_partition()[None, None]
    images = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="does not fit"):
        select_features(grid_partition(16)[None, None], images, blob_relevance()[None])
    with pytest.raises(TypeError, match="integer"):
        select_features(partition.float(), images, blob_relevance()[None])
    with pytest.raises(ValueError, match="relevance of shape"):
        select_features(partition, images, torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="model="):
        select_features(partition, images)
    with pytest.raises(ValueError, match="k must be"):
        select_features(partition, images, blob_relevance()[None], config=SelectionConfig(k=0))


def test_pixels_at_the_percentile_are_not_kept():
    """An LRP-like map is 0 almost everywhere, so its 95th percentile is 0: zeros stay out."""
    from ctc_plugin.features.selection import relevant_pixels

    relevance = np.zeros((32, 32))
    relevance[4:8, 4:8] = np.linspace(1.0, 2.0, 16).reshape(4, 4)
    keep = relevant_pixels(relevance, SelectionConfig())
    assert np.percentile(relevance, 95) == 0
    assert keep.any() and not keep[relevance == 0].any()


def test_a_pixel_at_the_jenks_break_is_not_kept():
    """Jenks breaks are values of the data: the pixel on the cut is below it, not above."""
    from ctc_plugin.features.selection import relevant_pixels

    relevance = np.arange(64, dtype=np.float64).reshape(8, 8) ** 1.5
    config = SelectionConfig(grid=1, percentile=0.0)
    breaks = jenkspy.jenks_breaks(relevance.ravel(), n_classes=config.jenks_classes)
    cut = breaks[config.jenks_break]
    assert (relevance == cut).any()
    keep = relevant_pixels(relevance, config)
    np.testing.assert_array_equal(keep, (relevance > cut) & (relevance > relevance.min()))


@pytest.mark.filterwarnings("ignore:image .* DBSCAN search:RuntimeWarning")
@pytest.mark.parametrize("normalised", [False, True])
def test_a_grayscale_classifier_gets_its_one_channel_and_colours_read_it_as_gray(normalised):
    """As CTC segments grayscale: colours of the channel repeated, the model its one channel."""
    from ctc_plugin.features.relevance import relevance_heatmap

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 3),
    ).eval()
    gray = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    scaling = {"mean": (0.5,), "std": (0.25,)} if normalised else {}
    if normalised:
        gray = (gray - 0.5) / 0.25
    partition = grid_partition()[None, None]
    selection = select_features(partition, gray, model=model, target=1, **scaling)
    heatmap = relevance_heatmap(None, model, gray, 1)
    rgb_scaling = {name: values * 3 for name, values in scaling.items()}
    expected = select_features(
        partition, gray.expand(-1, 3, -1, -1), heatmap, config=SelectionConfig(), **rgb_scaling
    )
    assert torch.equal(selection.mask, expected.mask)
    assert torch.equal(selection.relevance, expected.relevance)


def test_images_of_other_channel_counts_are_refused_with_the_rgb_view_to_pass():
    partition = grid_partition()[None, None]
    with pytest.raises(ValueError, match=r"4 channels: .*x\[:, :3\], relevance=heatmap"):
        select_features(partition, torch.rand(1, 4, 32, 32), blob_relevance()[None])
