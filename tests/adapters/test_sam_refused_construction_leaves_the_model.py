"""A SAMSegmenter that is refused when built leaves the model it was given as it was."""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.adapters.sam import SAMSegmenter, build_tiny_sam


def modes_and_devices(model: torch.nn.Module) -> tuple[list[bool], set[str]]:
    return [m.training for m in model.modules()], {p.device.type for p in model.parameters()}


def test_an_unknown_generator_option_leaves_the_model_in_its_mode_and_on_its_device():
    """Was: the model was moved to ``device`` and put in eval mode, then the option refused."""
    sam = build_tiny_sam().train()
    before = modes_and_devices(sam)
    with pytest.raises(TypeError, match="points_per_sid"):
        SAMSegmenter(model=sam, device="meta", cache=None, points_per_sid=4)
    assert modes_and_devices(sam) == before == ([True] * len(before[0]), {"cpu"})


def test_a_model_refused_for_its_dtype_is_not_moved_first():
    sam = build_tiny_sam().double().train()
    before = modes_and_devices(sam)
    with pytest.raises(ValueError, match="float64"):
        SAMSegmenter(model=sam, device="meta", cache=None)
    assert modes_and_devices(sam) == before


def test_an_accepted_model_is_still_moved_and_put_in_eval_mode():
    sam = build_tiny_sam().train()
    segmenter = SAMSegmenter(model=sam, device="meta", cache=None, points_per_side=4)
    assert segmenter.model is sam
    modes, devices = modes_and_devices(sam)
    assert not any(modes) and devices == {"meta"}
