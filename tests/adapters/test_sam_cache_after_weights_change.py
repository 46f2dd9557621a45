"""A checkpoint's segmenter: new weights loaded into its model are a new cache key."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ctc_plugin.adapters.sam import SAMSegmenter, build_tiny_sam
from ctc_plugin.features import MaskCache

GENERATOR = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "sam_tiny.pth"
    torch.save(build_tiny_sam().state_dict(), path)
    return path


def test_weights_loaded_after_the_checkpoint_are_not_served_old_masks(checkpoint, tmp_path):
    images = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    segmenter = SAMSegmenter(
        checkpoint=checkpoint, model_type="tiny", cache=MaskCache(tmp_path / "c"), **GENERATOR
    )
    key = segmenter.settings_key()
    segmenter(images)
    assert segmenter.settings_key() == key  # running SAM does not change the key
    segmenter.model.load_state_dict(build_tiny_sam(seed=5).state_dict())
    assert segmenter.settings_key() != key
    got = segmenter(images)
    expected = SAMSegmenter(model=build_tiny_sam(seed=5), cache=None, **GENERATOR)(images)
    assert segmenter.cache.hits == 0
    assert torch.equal(got, expected)


def test_an_unpickled_checkpoint_segmenter_keeps_its_key(checkpoint, tmp_path):
    segmenter = SAMSegmenter(
        checkpoint=checkpoint, model_type="tiny", cache=MaskCache(tmp_path / "c"), **GENERATOR
    )
    copy = pickle.loads(pickle.dumps(segmenter))
    assert copy.settings_key() == segmenter.settings_key()
    assert copy.model_source.startswith("file:")
    segmenter.model.load_state_dict(build_tiny_sam(seed=5).state_dict())
    changed = pickle.loads(pickle.dumps(segmenter))
    assert changed.settings_key() == segmenter.settings_key() != copy.settings_key()


def test_checkpoint_and_model_together_are_refused(checkpoint):
    with pytest.raises(ValueError, match="not both"):
        SAMSegmenter(checkpoint=checkpoint, model=build_tiny_sam(seed=3), cache=None)


def test_numpy_integer_point_counts_are_accepted(checkpoint):
    segmenter = SAMSegmenter(
        checkpoint=checkpoint,
        model_type="tiny",
        cache=None,
        points_per_side=np.int64(4),
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    assert segmenter(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="points_per_side must be a positive int"):
        SAMSegmenter(checkpoint=checkpoint, model_type="tiny", cache=None, points_per_side=True)


@pytest.mark.parametrize("given", ["checkpoint", "model"])
def test_weights_rewritten_through_data_are_a_new_key(checkpoint, tmp_path, given):
    """``p.data`` writes move no version counter: the key once stayed, old masks were served."""
    source = {"checkpoint": checkpoint, "model_type": "tiny"}
    if given == "model":
        source = {"model": build_tiny_sam()}
    segmenter = SAMSegmenter(cache=MaskCache(tmp_path / "c"), **source, **GENERATOR)
    key = segmenter.settings_key()
    other = build_tiny_sam(seed=5).state_dict()
    for name, parameter in segmenter.model.named_parameters():
        parameter.data.copy_(other[name])
    assert segmenter.settings_key() != key


def test_the_model_cannot_be_swapped_under_the_mask_generator(checkpoint):
    """The generator ran the old model while the key named the new one: wrong masks cached."""
    segmenter = SAMSegmenter(checkpoint=checkpoint, model_type="tiny", cache=None, **GENERATOR)
    with pytest.raises(AttributeError, match=r"cannot be replaced: .*SAMSegmenter\(model=...\)"):
        segmenter.model = build_tiny_sam(seed=5)
    assert segmenter.generator.predictor.model is segmenter.model


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_area": None}, "min_area must be a non-negative number"),
        ({"min_area": "a"}, "min_area must be a non-negative number"),
        ({"pred_iou_thresh": 1.5}, "pred_iou_thresh is a fraction between 0 and 1"),
        ({"box_nms_thresh": -1}, "box_nms_thresh is a fraction between 0 and 1"),
    ],
)
def test_options_that_cannot_mean_what_they_say_are_refused_when_built(options, message):
    with pytest.raises(ValueError, match=message):
        SAMSegmenter(model=build_tiny_sam(), cache=None, **options)
