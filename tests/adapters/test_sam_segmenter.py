"""SAMSegmenter on a tiny random SAM loaded through the real checkpoint path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator

from ctc_plugin.adapters.sam import SAMSegmenter, build_tiny_sam, load_sam
from ctc_plugin.features import MaskCache, to_partition

# A random SAM's quality scores are low: keep every mask so that the tests see real masks.
GENERATOR = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(build_tiny_sam().state_dict(), path)
    return path


@pytest.fixture()
def images() -> torch.Tensor:
    from skimage import data
    from skimage.transform import resize

    pictures = [resize(data.astronaut(), (40, 56)), resize(data.coffee(), (40, 56))]
    return torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float().clamp(0, 1)


def make(checkpoint: Path, tmp_path: Path, **options) -> SAMSegmenter:
    return SAMSegmenter(
        checkpoint=checkpoint,
        model_type="tiny",
        cache=MaskCache(tmp_path),
        **{**GENERATOR, **options},
    )


class CountingGenerate:
    """Wraps a generator's generate() and records what it was given."""

    def __init__(self, segmenter: SAMSegmenter) -> None:
        self.inner = segmenter.generator.generate
        self.inputs: list[np.ndarray] = []
        segmenter.generator.generate = self

    def __call__(self, image: np.ndarray):
        self.inputs.append(image.copy())
        return self.inner(image)


def test_checkpoint_is_loaded_through_the_real_path(checkpoint: Path, tmp_path: Path):
    segmenter = make(checkpoint, tmp_path)
    saved = torch.load(checkpoint, weights_only=True)
    loaded = segmenter.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[name], loaded[name]) for name in saved)
    assert sum(p.numel() for p in segmenter.model.parameters()) < 100_000


def test_mask_is_a_partition_with_real_sam_masks(checkpoint: Path, tmp_path: Path, images):
    result = make(checkpoint, tmp_path).segment(images)
    assert result.mask.shape == (2, 1, 40, 56) and result.mask.dtype == torch.int64
    sam_features = 0
    for labels, table in zip(result.mask[:, 0], result.features):
        assert torch.equal(torch.unique(labels), torch.arange(int(labels.max()) + 1))
        assert len(table) == int(labels.max()) + 1 and table.area.sum() == labels.numel()
        from_sam = table.source >= 0
        sam_features += int(from_sam.sum())
        assert np.isfinite(table.scores["predicted_iou"][from_sam]).all()
        assert np.isnan(table.scores["predicted_iou"][~from_sam]).all()
    assert sam_features >= 2  # the tests exercise real SAM masks


def test_same_as_running_the_generator_by_hand(checkpoint: Path, tmp_path: Path, images):
    segmenter = make(checkpoint, tmp_path, image_size=28)
    spy = CountingGenerate(segmenter)
    mask = segmenter(images[:1])
    (given,) = spy.inputs
    assert given.dtype == np.uint8 and given.shape == (20, 28, 3)  # aspect ratio kept
    # independent pipeline: the generator on a resized RGB image, masks resized back
    rgb = (images[:1] * 255).round()
    small = torch.nn.functional.interpolate(rgb, size=(20, 28), mode="bilinear", antialias=True)
    expected_input = small[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    assert np.abs(given.astype(int) - expected_input.astype(int)).max() <= 1
    generator = SamAutomaticMaskGenerator(load_sam(checkpoint, "tiny"), **GENERATOR)
    records = generator.generate(given)
    masks = torch.from_numpy(np.stack([r["segmentation"] for r in records]))[:, None].float()
    full = torch.nn.functional.interpolate(masks, size=(40, 56), mode="nearest-exact")[:, 0] > 0.5
    assert torch.equal(mask[0, 0], to_partition(full.numpy()))


def test_sam_sees_rgb_not_bgr(checkpoint: Path, tmp_path: Path):
    red = torch.zeros(1, 3, 16, 16)
    red[:, 0] = 1.0
    segmenter = make(checkpoint, tmp_path)
    spy = CountingGenerate(segmenter)
    segmenter(red)
    assert (spy.inputs[0][..., 0] == 255).all() and (spy.inputs[0][..., 2] == 0).all()


def test_second_call_does_not_run_sam_again(checkpoint: Path, tmp_path: Path, images):
    segmenter = make(checkpoint, tmp_path)
    spy = CountingGenerate(segmenter)
    first = segmenter(images)
    assert len(spy.inputs) == 2
    second = segmenter(images)
    assert len(spy.inputs) == 2 and torch.equal(first, second)
    # a fresh segmenter with the same settings shares the cache
    other = make(checkpoint, tmp_path)
    other_spy = CountingGenerate(other)
    assert torch.equal(other(images), first) and not other_spy.inputs
    # other generator settings are another key
    changed = make(checkpoint, tmp_path, points_per_side=3)
    changed_spy = CountingGenerate(changed)
    changed(images)
    assert len(changed_spy.inputs) == 2


def test_few_or_no_masks_never_crash(checkpoint: Path, tmp_path: Path, images):
    segmenter = SAMSegmenter(
        checkpoint=checkpoint, model_type="tiny", cache=None, points_per_side=2
    )
    mask = segmenter(images)  # default thresholds: a random SAM keeps few or no masks
    assert mask.shape == (2, 1, 40, 56)
    segmenter.generator.generate = lambda image: []
    empty = segmenter.segment(images)
    assert torch.equal(empty.mask, torch.zeros_like(empty.mask))
    assert empty.features[0].source.tolist() == [-1]


def test_model_argument(images):
    segmenter = SAMSegmenter(model=build_tiny_sam(), cache=None, **GENERATOR)
    assert segmenter(images).shape == (2, 1, 40, 56)
    # the fingerprint of the weights is part of the cache key
    other = SAMSegmenter(model=build_tiny_sam(seed=1), cache=None, **GENERATOR)
    assert segmenter.settings_key() != other.settings_key()
    with pytest.raises(TypeError, match="segment_anything.modeling.Sam"):
        SAMSegmenter(model=torch.nn.Linear(2, 2))


def test_missing_checkpoint_names_the_argument_and_the_flag(tmp_path: Path):
    with pytest.raises(ValueError, match=r"checkpoint=.*--sam-checkpoint"):
        SAMSegmenter()
    with pytest.raises(FileNotFoundError, match="--sam-checkpoint"):
        SAMSegmenter(checkpoint=tmp_path / "sam_vit_b_01ec64.pth")


def test_mismatched_or_corrupt_checkpoint_is_a_clear_error(tmp_path: Path):
    other_width = tmp_path / "wide.pth"
    torch.save(build_tiny_sam(embed_dim=32).state_dict(), other_width)
    with pytest.raises(ValueError, match="does not match model_type='tiny'"):
        SAMSegmenter(checkpoint=other_width, model_type="tiny")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x04 this is not a checkpoint")
    with pytest.raises(ValueError, match="could not read SAM checkpoint .*plain pickle"):
        SAMSegmenter(checkpoint=corrupt, model_type="tiny")
    not_weights = tmp_path / "object.pth"
    torch.save({"optimizer": MaskCache(tmp_path)}, not_weights)  # an arbitrary object: refused
    with pytest.raises(ValueError, match="objects other than tensors .*MaskCache"):
        SAMSegmenter(checkpoint=not_weights, model_type="tiny")
    with pytest.raises(ValueError, match="model_type"):
        SAMSegmenter(checkpoint=other_width, model_type="vit_x")


@pytest.mark.slow
def test_tiny_checkpoint_as_vit_b_is_a_clear_error(checkpoint: Path):
    with pytest.raises(ValueError, match="does not match model_type='vit_b'"):
        SAMSegmenter(checkpoint=checkpoint, model_type="vit_b")


def test_ctc_runs_sam_once_per_image(checkpoint: Path, tmp_path: Path, images):
    from ctc_plugin import CTC

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 3),
    ).eval()
    segmenter = make(checkpoint, tmp_path)
    spy = CountingGenerate(segmenter)
    ctc = CTC(model, segmenter=segmenter)
    first = ctc.attribute(images, target=0)
    second = ctc.attribute(images, target=1)
    assert len(spy.inputs) == 2  # two images, segmented once each
    assert first.shape == second.shape == images.shape
    # the attribution is constant on each SAM feature
    mask = segmenter(images)
    for index in range(2):
        for feature in torch.unique(mask[index]):
            values = first[index][:, mask[index, 0] == feature]
            assert torch.allclose(values, values.flatten()[0].expand_as(values))


def test_threads_sharing_a_segmenter_get_their_own_masks(tmp_path: Path):
    """The generator's predictor holds the image it was set: threads take turns on it, and
    what they put in a shared cache is each image's own masks."""
    from concurrent.futures import ThreadPoolExecutor

    segmenter = SAMSegmenter(model=build_tiny_sam(), cache=MaskCache(tmp_path), **GENERATOR)
    pictures = [
        torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(i)) for i in range(6)
    ]
    expected = [SAMSegmenter(model=build_tiny_sam(), cache=None, **GENERATOR)(x) for x in pictures]
    for _ in range(3):
        segmenter.cache.clear()  # each round segments again, on several threads
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(segmenter, pictures))
        assert all(torch.equal(a, b) for a, b in zip(results, expected))
    again = SAMSegmenter(model=build_tiny_sam(), cache=MaskCache(tmp_path), **GENERATOR)
    assert all(torch.equal(again(x), e) for x, e in zip(pictures, expected))  # from the cache


def test_new_weights_of_a_given_model_are_a_new_cache_key(tmp_path: Path, images):
    sam = build_tiny_sam()
    segmenter = SAMSegmenter(model=sam, cache=MaskCache(tmp_path), **GENERATOR)
    before = segmenter.settings_key()
    segmenter(images)
    sam.load_state_dict(build_tiny_sam(seed=1).state_dict())
    assert segmenter.settings_key() != before
    fresh = SAMSegmenter(model=build_tiny_sam(seed=1), cache=None, **GENERATOR)
    assert torch.equal(segmenter(images), fresh(images))


@pytest.mark.parametrize("mode", ["uncompressed_rle", "coco_rle"])
def test_rle_output_modes_give_the_binary_masks_features(images, mode):
    binary = SAMSegmenter(model=build_tiny_sam(), cache=None, **GENERATOR)(images)
    rle = SAMSegmenter(model=build_tiny_sam(), cache=None, output_mode=mode, **GENERATOR)
    assert torch.equal(rle(images), binary)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dilation": -1}, "dilation must be"),
        ({"remainder": "none"}, "remainder must be"),
        ({"min_area": -1}, "min_area must be"),
        ({"points_per_side": 0}, "points_per_side must be a positive int"),
        ({"points_per_side": None}, "points_per_side=None needs point_grids="),
        ({"output_mode": "polygons"}, "output_mode must be"),
        ({"pred_iou_thresh": "x"}, "pred_iou_thresh must be a finite number"),
        ({"box_nms_thresh": float("nan")}, "box_nms_thresh must be a finite number"),
        ({"crop_n_layers": -1}, "crop_n_layers must be an int of at least 0"),
        ({"crop_n_points_downscale_factor": 0.5}, "crop_n_points_downscale_factor must be"),
        ({"min_mask_region_area": -3}, "min_mask_region_area must be a number of at least 0"),
        ({"image_size": 100000}, "image_size must be an int from 8 to 4096"),
        ({"image_size": 8.5}, "image_size must be an int from 8 to 4096"),
        ({"image_size": "big"}, "image_size must be an int from 8 to 4096"),
    ],
)
def test_bad_options_are_refused_when_built(options, message):
    with pytest.raises(ValueError, match=message):
        SAMSegmenter(model=build_tiny_sam(), cache=None, **options)


def test_a_model_not_in_float32_is_refused_when_built_and_a_given_model_has_no_type():
    with pytest.raises(ValueError, match=r"parameters are float64: .*model\.float\(\)"):
        SAMSegmenter(model=build_tiny_sam().double(), cache=None)
    segmenter = SAMSegmenter(model=build_tiny_sam(), cache=None, model_type="vit_h")
    assert segmenter.model_type is None  # not read from a model given as it is
    assert "model_type=None" in repr(segmenter)


def test_images_without_pixels_are_refused_before_sam_runs():
    """Was: torch's ``min(): Expected reduction dim to be specified`` from the normalisation."""
    segmenter = SAMSegmenter(model=build_tiny_sam(), cache=None, **GENERATOR)
    for shape in ((1, 3, 0, 5), (1, 3, 5, 0)):
        with pytest.raises(ValueError, match=r"images has no pixels \(height \d+, width \d+\)"):
            segmenter(torch.rand(shape))
