"""Properties of to_partition and as_feature_mask, and an independent re-implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.measure import label as sk_label
from skimage.morphology import dilation as sk_dilation

from ctc_plugin.features import as_feature_mask, mask_stack, to_partition
from tests.strategies import SIZE, blobs, rectangles

mask_lists = st.lists(blobs(), min_size=0, max_size=6)


def reference_partition(masks: list[np.ndarray], kernel: int) -> np.ndarray:
    """Independent version: each pixel goes to the smallest covering dilated mask (-1: none)."""
    height, width = SIZE, SIZE
    result = np.full((height, width), -1)
    footprint = np.ones((kernel, kernel), dtype=bool) if kernel > 1 else None
    dilated = [sk_dilation(m, footprint) if footprint is not None else m for m in masks]
    areas = [int(m.sum()) for m in masks]
    keys = [np.packbits(m).tobytes() for m in masks]
    for y in range(height):
        for x in range(width):
            covering = [i for i in range(len(masks)) if dilated[i][y, x] and areas[i] > 0]
            if covering:
                # painting order: area descending, then packed bits ascending, then the input
                # index descending; the last one painted wins
                result[y, x] = max(covering, key=lambda i: (-areas[i], keys[i], -i))
    return result


def check_partition(labels: torch.Tensor) -> None:
    assert labels.dtype == torch.int64
    ids = torch.unique(labels)
    assert ids.min() == 0
    assert torch.equal(ids, torch.arange(len(ids)))  # contiguous, every pixel has an id >= 0


@settings(max_examples=40, deadline=None)
@given(masks=mask_lists, dilation=st.sampled_from([0, 3, "auto"]))
def test_every_pixel_in_exactly_one_contiguous_feature(masks, dilation):
    labels = to_partition(masks, shape=(SIZE, SIZE), dilation=dilation)
    assert labels.shape == (SIZE, SIZE)
    check_partition(labels)


@settings(max_examples=40, deadline=None)
@given(masks=mask_lists, seed=st.integers(0, 1000), dilation=st.sampled_from([0, 3]))
def test_result_does_not_depend_on_mask_order(masks, seed, dilation):
    shuffled = [masks[i] for i in np.random.default_rng(seed).permutation(len(masks))]
    first = to_partition(masks, shape=(SIZE, SIZE), dilation=dilation)
    second = to_partition(shuffled, shape=(SIZE, SIZE), dilation=dilation)
    assert torch.equal(first, second)


@settings(max_examples=40, deadline=None)
@given(outer=rectangles(), fraction=st.floats(0.1, 0.9), others=mask_lists)
def test_nested_mask_keeps_its_pixels(outer, fraction, others):
    rows, cols = np.nonzero(outer)
    inner = np.zeros_like(outer)
    height = max(1, int((rows.max() - rows.min() + 1) * fraction))
    width = max(1, int((cols.max() - cols.min() + 1) * fraction))
    inner[rows.min() : rows.min() + height, cols.min() : cols.min() + width] = True
    # other masks may overlap the parent but not the nested mask
    others = [m for m in others if not (m & inner).any()]
    masks = [outer, *others, inner]
    labels, sources = to_partition(masks, shape=(SIZE, SIZE), dilation=0, return_sources=True)
    inner_ids = torch.unique(labels[torch.from_numpy(inner)])
    assert len(inner_ids) == 1
    if inner.sum() < outer.sum():
        assert sources[int(inner_ids[0])] == len(masks) - 1  # the feature is the nested mask


@settings(max_examples=30, deadline=None)
@given(masks=mask_lists, dilation=st.sampled_from([0, 3]))
def test_matches_independent_reimplementation(masks, dilation):
    labels, sources = to_partition(
        masks, shape=(SIZE, SIZE), dilation=dilation, min_area=1, return_sources=True
    )
    expected_source = reference_partition(masks, dilation)
    got_source = sources[labels.numpy()]
    covered = expected_source >= 0
    np.testing.assert_array_equal(got_source[covered], expected_source[covered])
    # uncovered pixels: one remainder feature per 8-connected component (min_area=1 keeps all)
    assert (got_source[~covered] == -1).all()
    components = sk_label(~covered, connectivity=2)
    remainder_labels = labels.numpy()[~covered]
    pairs = set(zip(components[~covered].tolist(), remainder_labels.tolist()))
    assert len(pairs) == len(set(components[~covered].tolist())) == len(set(remainder_labels))


def test_published_dilation_is_ceil_width_over_100():
    mask = np.zeros((30, 250), dtype=bool)
    mask[10, 100] = True
    labels, sources = to_partition([mask], dilation="auto", min_area=1, return_sources=True)
    feature = labels == int(np.nonzero(sources == 0)[0][0])
    kernel = math.ceil(250 / 100)
    assert int(feature.sum()) == kernel * kernel


def test_small_remainder_fragments_join_a_neighbour_and_large_ones_stay():
    mask = np.zeros((40, 40), dtype=bool)
    mask[:, :20] = True  # left half is one mask
    mask[0:2, 20:22] = True  # a notch, so the uncovered right part stays one component
    labels, sources = to_partition([mask], dilation=0, min_area=0.001, return_sources=True)
    assert list(sources) == [0, -1]
    tiny = np.ones((40, 40), dtype=bool)
    tiny[39, 39] = False  # one uncovered pixel < 0.1 % of 1600 pixels... (1 px = 0.06 %)
    labels, sources = to_partition([tiny], dilation=0, return_sources=True)
    assert list(sources) == [0] and int(labels.max()) == 0


def test_single_remainder_option_and_empty_features_dropped():
    left = np.zeros((20, 20), dtype=bool)
    left[:, :5] = True
    right = np.zeros((20, 20), dtype=bool)
    right[:, 15:] = True
    labels, sources = to_partition(
        [left, right], dilation=0, remainder="single", return_sources=True
    )
    assert sorted(sources.tolist()) == [-1, 0, 1]
    # a duplicate is fully covered by its twin: one of the two disappears
    labels, sources = to_partition([left, left.copy()], dilation=0, return_sources=True)
    assert len(sources) == 2 and sorted(sources.tolist())[0] == -1


def test_no_masks_gives_one_feature_and_needs_a_shape():
    labels = to_partition([], shape=(8, 9))
    assert torch.equal(labels, torch.zeros(8, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        to_partition([])


def test_input_forms_agree():
    rng = np.random.default_rng(0)
    stack = rng.random((4, 16, 16)) > 0.6
    from_stack = to_partition(stack)
    assert torch.equal(from_stack, to_partition(list(stack)))
    assert torch.equal(from_stack, to_partition(torch.from_numpy(stack)))
    assert torch.equal(from_stack, to_partition([{"segmentation": m, "area": 1} for m in stack]))
    assert torch.equal(from_stack, to_partition(stack.astype(np.uint8)))


def test_sam_uncompressed_rle_is_decoded():
    from segment_anything.utils.amg import mask_to_rle_pytorch

    stack = np.random.default_rng(1).random((3, 12, 10)) > 0.5
    rles = mask_to_rle_pytorch(torch.from_numpy(stack))
    assert torch.equal(to_partition(stack), to_partition([{"segmentation": r} for r in rles]))


def test_sam_compressed_coco_rle_is_decoded():
    from segment_anything.utils.amg import coco_encode_rle, mask_to_rle_pytorch

    stack = np.random.default_rng(2).random((3, 12, 10)) > 0.5
    records = [
        {"segmentation": coco_encode_rle(r)} for r in mask_to_rle_pytorch(torch.from_numpy(stack))
    ]
    assert all(isinstance(r["segmentation"]["counts"], str) for r in records)
    assert torch.equal(to_partition(stack), to_partition(records))


def test_compressed_coco_rle_without_pycocotools_says_what_to_install(monkeypatch):
    import sys

    record = {"segmentation": {"size": [2, 2], "counts": "04"}}
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(ValueError, match="pip install pycocotools, or run SamAutomaticMask"):
        to_partition([record])


@pytest.mark.parametrize(
    "bad, message",
    [
        ([np.zeros((4, 4), bool), np.zeros((5, 4), bool)], "one shape"),
        (np.full((2, 4, 4), 3), "boolean"),
        ([{"area": 3}], "segmentation"),
    ],
)
def test_bad_masks_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        to_partition(bad)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="dilation"):
        to_partition([np.ones((4, 4), bool)], dilation=-1)
    with pytest.raises(ValueError, match="remainder"):
        to_partition([np.ones((4, 4), bool)], remainder="rest")


def test_as_feature_mask_forms():
    labels = torch.tensor([[5, 5, 9], [2, 2, 9]])
    out = as_feature_mask(labels)
    assert out.shape == (1, 1, 2, 3)
    # ids made contiguous, pixels grouped the same way
    assert torch.equal(out[0, 0], torch.tensor([[1, 1, 2], [0, 0, 2]]))
    batch = as_feature_mask(torch.stack([labels, labels + 1]))
    assert batch.shape == (2, 1, 2, 3) and torch.equal(batch[0], batch[1])
    stack = np.zeros((2, 2, 3), dtype=bool)
    stack[0, :, :2] = True
    expected = torch.tensor([[0, 0, 1], [0, 0, 1]])  # the mask, then the uncovered column
    assert torch.equal(as_feature_mask(stack, dilation=0)[0, 0], expected)
    assert mask_stack(stack).shape == (2, 2, 3)
    per_image = as_feature_mask([list(stack), list(stack)], dilation=0)
    assert per_image.shape == (2, 1, 2, 3)
    with pytest.raises(TypeError, match="integer"):
        as_feature_mask(torch.rand(2, 3))


def test_a_list_of_label_maps_is_one_per_image_whatever_ids_they_hold():
    """Integer (H, W) maps in a list are label maps, one per image, also when a map holds only
    ids 0 and 1 (that once made the list read as two masks of one image)."""
    halves = np.zeros((4, 6), dtype=np.int64)
    halves[:, 3:] = 1
    thirds = np.zeros((4, 6), dtype=np.int64)
    thirds[:2], thirds[3:] = 1, 2
    for maps in ([halves, thirds], [thirds, halves]):
        out = as_feature_mask(maps)
        assert out.shape == (2, 1, 4, 6)
        for item, expected in zip(out[:, 0], maps):
            assert torch.equal(item, torch.from_numpy(expected))
    with pytest.raises(ValueError, match="not both: item 0 is an image's, item 1 one mask"):
        as_feature_mask([halves, halves.astype(bool)])


@pytest.mark.parametrize("high", [1, 255])
def test_integer_masks_of_only_zero_and_one_value_are_refused_as_ambiguous(high):
    """0/1 or 0/255 integer slices (PNG masks) read as one image's masks as well as label maps
    of two features each: a stack once became several images' label maps, and Captum ran on the
    wrong features. Booleans and (N, 1, H, W) label maps say which is meant."""
    halves = np.zeros((4, 6), dtype=np.uint8)
    halves[:, 3:] = high
    stack = np.stack([halves, high - halves])
    with pytest.raises(ValueError, match=r"ambiguous: .*pass booleans \(masks > 0\)"):
        as_feature_mask(stack)
    with pytest.raises(ValueError, match=r"ambiguous: .*\[m > 0 for m in masks\]"):
        as_feature_mask(list(stack))
    assert as_feature_mask(stack > 0).shape == (1, 1, 4, 6)  # one image, two features
    assert as_feature_mask(stack[:, None]).shape == (2, 1, 4, 6)  # two label maps
    with pytest.raises(TypeError, match=r"pass booleans \(masks > 0.5\)"):
        as_feature_mask(stack.astype(np.float32) / high)


def test_as_feature_mask_accepts_captum_image_mask_input():
    pytest.importorskip("PIL")
    from captum.attr._utils.interpretable_input import ImageMaskInput
    from PIL import Image

    image = Image.fromarray(np.zeros((6, 6, 3), dtype=np.uint8))
    first = torch.zeros(6, 6, dtype=torch.bool)
    first[:3] = True
    second = torch.zeros(6, 6, dtype=torch.bool)
    second[:, :3] = True
    masks = ImageMaskInput(image, mask_list=[first, second])
    expected = to_partition([first, second]).unsqueeze(0).unsqueeze(0)
    assert torch.equal(as_feature_mask(masks), expected)
    labels = torch.arange(36).reshape(6, 6) // 12
    assert as_feature_mask(ImageMaskInput(image, mask=labels)).unique().tolist() == [0, 1, 2]


def test_signed_small_integer_label_maps_are_relabelled():
    """int8 ids minus their minimum overflowed int8: skimage refused 'negative values'."""
    from ctc_plugin.features import as_feature_mask

    labels = np.array([[-100, 100], [0, 5]], dtype=np.int8)
    assert as_feature_mask(labels).flatten().tolist() == [0, 3, 1, 2]
