"""Offline segmenters, the declared normalisation, metadata and the segmenter protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation
from skimage import data, segmentation
from skimage.transform import resize

from ctc_plugin.features import (
    GridSegmenter,
    ImageNormalisation,
    SegmenterProtocol,
    SuperpixelSegmenter,
    feature_table,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def natural_images(size: int) -> torch.Tensor:
    names = ("astronaut", "coffee", "chelsea", "rocket")
    arrays = [resize(getattr(data, name)(), (size, size), anti_aliasing=True) for name in names]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().clamp(0, 1)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label maps group the pixels identically (ids may differ)."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def is_contiguous_partition(mask: torch.Tensor) -> bool:
    return all(
        torch.equal(torch.unique(m), torch.arange(int(m.max()) + 1)) for m in mask.flatten(1)
    )


@pytest.mark.parametrize("size", [96, 224])
def test_default_superpixels_give_10_to_30_segments(size):
    images = natural_images(size)
    noise = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    mask = SuperpixelSegmenter()(torch.cat([images, noise]))
    assert mask.shape == (5, 1, size, size) and mask.dtype == torch.int64
    assert is_contiguous_partition(mask)
    counts = [int(m.max()) + 1 for m in mask]
    assert all(10 <= c <= 30 for c in counts), counts


@pytest.mark.parametrize("method", ["slic", "felzenszwalb", "quickshift", "watershed"])
def test_every_method_gives_a_contiguous_partition(method):
    images = natural_images(64)[:2]
    segmenter = SuperpixelSegmenter(method)
    result = segmenter.segment(images)
    assert result.mask.shape == (2, 1, 64, 64)
    assert is_contiguous_partition(result.mask)
    for labels, table in zip(result.mask[:, 0].numpy(), result.features):
        assert len(table) == labels.max() + 1
        assert table.area.sum() == labels.size


def test_slic_matches_scikit_image_up_to_relabelling():
    images = natural_images(96)[:1]
    ours = SuperpixelSegmenter("slic", min_area=0)(images)[0, 0].numpy()
    rgb = (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    peer = segmentation.slic(rgb, n_segments=25, compactness=30.0, sigma=1.0, start_label=0)
    assert same_partition(ours, peer)


@pytest.mark.parametrize("n_segments", [100, 250, 500])
def test_many_segments_asked_for_are_many_given(n_segments):
    """The default ``min_area`` shrinks with ``n_segments`` (0.5% of the image would merge
    most of 250 superpixels into a few remainders)."""
    counts = [
        int(m.max()) + 1 for m in SuperpixelSegmenter(n_segments=n_segments)(natural_images(224))
    ]
    assert all(0.7 * n_segments <= c <= 1.3 * n_segments for c in counts), counts


@pytest.mark.parametrize("method", ["slic", "felzenszwalb", "quickshift", "watershed"])
@pytest.mark.parametrize(("n_segments", "min_area"), [(200, 0.01), (60, 0.02)])
def test_small_superpixels_are_merged_into_neighbours(method, n_segments, min_area):
    """Each superpixel below ``min_area`` joins a neighbour: many features, none a union of
    left-out superpixels (was: they were dropped, and the pieces of their union at least
    ``min_area`` became features; SLIC at 200 segments gave one feature, the whole image)."""
    images = natural_images(96)[:1]
    segmenter = SuperpixelSegmenter(method, n_segments=n_segments, min_area=min_area)
    result = segmenter.segment(images)
    labels, table = result.mask[0, 0].numpy(), result.features[0]
    assert table.area.min() >= min_area * 96 * 96
    assert len(table) >= 10, table.area.tolist()
    assert table.area.max() <= 0.25 * 96 * 96, table.area.tolist()
    assert (table.source >= 0).all()  # every feature is a superpixel (with those it took in)
    rgb = (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    raw = segmenter._raw_labels(rgb)
    for feature, raw_id in enumerate(table.source):  # each feature holds its raw superpixel
        assert (labels[raw == raw_id] == feature).all()
    pairs = np.unique(np.stack([raw.ravel(), labels.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1]  # no superpixel is split between features


def test_small_segments_merge_smallest_first_until_each_is_large_enough():
    """A chain of small segments: merged one at a time, smallest first, each into the neighbour
    with the longest shared border, until all reach ``min_pixels`` or one segment is left."""
    from ctc_plugin.features.superpixel import _merge_small_segments

    tiles = np.arange(16).reshape(4, 4).repeat(2, axis=0).repeat(2, axis=1)  # 16 tiles of 4 px
    merged = _merge_small_segments(tiles, 8)
    ids, areas = np.unique(merged, return_counts=True)
    assert areas.min() >= 8 and 2 <= len(ids) <= 8
    assert all(len(np.unique(merged[tiles == tile])) == 1 for tile in range(16))
    assert len(np.unique(_merge_small_segments(tiles, 1000))) == 1  # one segment left
    strip = np.array([[0, 0, 0, 0, 1, 2, 3, 3, 3]])  # 1 and 2: one pixel each, side by side
    assert _merge_small_segments(strip, 2).tolist() == [[0, 0, 0, 0, 0, 0, 3, 3, 3]]
    assert _merge_small_segments(strip, 0).tolist() == strip.tolist()
    assert np.array_equal(_merge_small_segments(np.zeros((3, 3), int), 50), np.zeros((3, 3)))
    # segment 1 borders 2 along its side and top, 0 along its side only: it joins 2, not the
    # lower id 0
    bar = np.array([[2, 2, 2, 2, 2], [2, 1, 0, 0, 0], [2, 1, 0, 0, 0], [2, 1, 0, 0, 0]])
    assert _merge_small_segments(bar, 4)[1:, 1].tolist() == [2, 2, 2]


def test_grid_matches_independent_cells():
    mask = GridSegmenter((2, 3))(torch.rand(2, 3, 5, 7))
    rows = np.array([0, 0, 0, 1, 1])  # 5 rows in 2 cells: sizes 3 and 2
    cols = np.array([0, 0, 0, 1, 1, 2, 2])  # 7 columns in 3 cells: sizes 3, 2, 2
    expected = rows[:, None] * 3 + cols[None, :]
    assert (mask[:, 0].numpy() == expected).all()
    with pytest.raises(ValueError, match="does not fit"):
        GridSegmenter(8)(torch.rand(1, 3, 4, 4))


def test_normalised_inputs_declared_with_mean_std_give_the_same_mask():
    images = natural_images(64)[:2]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalised = (images - mean) / std
    plain = SuperpixelSegmenter()(images)
    declared = SuperpixelSegmenter(mean=IMAGENET_MEAN, std=IMAGENET_STD)(normalised)
    assert torch.equal(plain, declared)
    scaled = SuperpixelSegmenter(value_range=(0, 255))(images * 255)
    assert torch.equal(plain, scaled)


def test_undeclared_normalisation_is_a_clear_error():
    images = (natural_images(32)[:1] - 0.5) / 0.25
    with pytest.raises(ValueError, match="mean=/std="):
        SuperpixelSegmenter()(images)
    with pytest.raises(ValueError, match=r"floating-point .* x\.float\(\) / 255"):
        SuperpixelSegmenter()(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        SuperpixelSegmenter()(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="both"):
        ImageNormalisation(mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="method"):
        SuperpixelSegmenter("kmeans")


def test_auto_range_rescales_per_image():
    normalisation = ImageNormalisation(value_range="auto")
    images = torch.stack([torch.linspace(-3, 5, 3 * 4 * 4).view(3, 4, 4)])
    unit = normalisation.to_unit(images)
    assert float(unit.min()) == 0.0 and float(unit.max()) == 1.0


def test_feature_table_matches_direct_computation():
    labels = np.array([[0, 0, 1], [2, 2, 1], [2, 2, 1]])
    table = feature_table(labels, scores={"s": [0.1, 0.2, 0.3]})
    assert table.area.tolist() == [2, 3, 4]
    assert table.bbox.tolist() == [[0, 0, 2, 1], [2, 0, 1, 3], [0, 1, 2, 2]]
    assert table.source.tolist() == [0, 1, 2]
    assert table.scores["s"].tolist() == [0.1, 0.2, 0.3]


def test_segmenters_are_captum_feature_masks():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 32 * 32, 3),
    )
    images = natural_images(32)[:2]
    for segmenter in (SuperpixelSegmenter(), GridSegmenter(4)):
        assert isinstance(segmenter, SegmenterProtocol)
        mask = segmenter(images)
        attributions = FeatureAblation(model).attribute(images, target=0, feature_mask=mask)
        assert attributions.shape == images.shape
        # every feature carries one score, as Captum defines it
        for index in range(2):
            for feature in torch.unique(mask[index]):
                values = attributions[index][:, mask[index, 0] == feature]
                assert torch.allclose(values, values.flatten()[0].expand_as(values))


def test_non_finite_and_empty_batches_are_clear_errors():
    images = torch.rand(1, 3, 8, 8)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        SuperpixelSegmenter()(images)
    with pytest.raises(ValueError, match="empty batch"):
        GridSegmenter(2)(torch.rand(0, 3, 8, 8))
