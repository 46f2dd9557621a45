"""Integrative CAM on OpenAI CLIP's sequence-first ViT, following the advice its errors give.

CTC explains this model (``test_sequence_first_clip_transformer.py``); Integrative CAM does not
know its ``ResidualAttentionBlock`` and says to pass ``layers=[the blocks]`` and
``reshape_transform=tokens_to_grid``. Those blocks return ``(L, N, D)`` tokens, sequence first.
"""

from __future__ import annotations

import functools

import pytest
import torch

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam import tokens_to_grid
from tests.ctc.test_sequence_first_clip_transformer import VisionTransformer


def _model() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer().eval()


def test_without_layers_the_refusal_names_the_way_out() -> None:
    with pytest.raises(ValueError, match="layers="):
        IntegrativeCAM(_model()).attribute(torch.rand(1, 3, 8, 8), target=0)


def test_the_blocks_moved_back_to_batch_first_give_a_map() -> None:
    model = _model()
    grid = functools.partial(tokens_to_grid, grid=(4, 4))
    cam = IntegrativeCAM(
        model, layers=list(model.resblocks), reshape_transform=lambda t: grid(t.permute(1, 0, 2))
    ).attribute(torch.rand(2, 3, 8, 8), target=0)
    assert cam.shape == (2, 1, 8, 8) and torch.isfinite(cam).all()


def test_following_the_advice_on_a_sequence_first_model_is_a_map_or_says_sequence_first() -> None:
    model = _model()
    blocks = list(model.resblocks)
    try:
        cam = IntegrativeCAM(model, layers=blocks, reshape_transform=tokens_to_grid).attribute(
            torch.rand(1, 3, 8, 8), target=0
        )
    except ValueError as error:
        assert "sequence" in str(error) or "permute" in str(error), str(error)
    else:
        assert cam.shape == (1, 1, 8, 8)
