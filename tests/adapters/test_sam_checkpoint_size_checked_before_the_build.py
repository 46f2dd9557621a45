"""A segment-anything checkpoint of another ViT size is refused before the architecture is built.

Was: a vit_b checkpoint given with ``model_type='vit_h'`` built the whole vit_h (about 2.5 GB,
seconds) before loading the checkpoint into it reported the mismatch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ctc_plugin.adapters import sam
from ctc_plugin.adapters.sam import SAMSegmenter


class Built(Exception):
    """The architecture's builder was called."""


def _never_built(checkpoint=None):
    raise Built


def _checkpoint(tmp_path: Path, width: int, prefix: str = "") -> Path:
    """A file with only the patch embedding of a ViT ``width`` wide (no SAM loads it whole)."""
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {f"{prefix}image_encoder.patch_embed.proj.weight": torch.zeros(width, 3, 1, 1)}, path
    )
    return path


@pytest.mark.parametrize(
    ("width", "prefix", "model_type", "held"),
    [
        (768, "", "vit_h", "vit_b"),
        (768, "", "default", "vit_b"),  # segment-anything's name for vit_h
        (1280, "module.", "vit_l", "vit_h"),  # under a wrapper's prefix
        (1024, "", "vit_b", "vit_l"),
    ],
)
def test_another_vit_size_is_refused_before_the_build(
    tmp_path, monkeypatch, width, prefix, model_type, held
):
    for name in ("vit_b", "vit_l", "vit_h", "default"):
        monkeypatch.setitem(sam.SAM_MODEL_TYPES, name, _never_built)
    path = _checkpoint(tmp_path, width, prefix)
    with pytest.raises(ValueError) as caught:
        SAMSegmenter(checkpoint=path, model_type=model_type, cache=None)
    message = str(caught.value)
    assert f"does not match model_type={model_type!r}" in message and str(path) in message
    assert f"it holds an image encoder {width} wide: model_type={held!r}" in message


def test_a_checkpoint_of_the_asked_size_is_built_and_loaded(tmp_path, monkeypatch):
    monkeypatch.setitem(sam.SAM_MODEL_TYPES, "vit_b", _never_built)
    with pytest.raises(Built):
        SAMSegmenter(checkpoint=_checkpoint(tmp_path, 768), model_type="vit_b", cache=None)
