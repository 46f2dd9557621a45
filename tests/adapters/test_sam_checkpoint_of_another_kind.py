"""A checkpoint that does not fit says what it looks like: which SAM, which ``model_type``.

Was: a MobileSAM or SAM 2 checkpoint given to ``SAMSegmenter`` was told to try ``vit_b``,
``vit_l`` or ``vit_h``, none of which loads it; a ViT-B checkpoint loaded as ``vit_h`` was told
the same three names, without which one it is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ctc_plugin.adapters.sam import SAMSegmenter


def checkpoint(tmp_path: Path, keys: dict[str, tuple[int, ...]]) -> Path:
    path = tmp_path / "checkpoint.pth"
    torch.save({key: torch.zeros(shape) for key, shape in keys.items()}, path)
    return path


MOBILE_SAM = {"image_encoder.layers.0.blocks.0.conv1.c.weight": (4, 4, 1, 1)}
SAM2 = {"image_encoder.trunk.blocks.0.attn.qkv.weight": (6, 2), "maskmem_tpos_enc": (1, 1, 1, 4)}


@pytest.mark.parametrize(
    ("keys", "advice"),
    [(MOBILE_SAM, "a MobileSAM checkpoint: MobileSAMSegmenter"), (SAM2, "a SAM 2 checkpoint")],
)
def test_another_sam_s_checkpoint_names_the_segmenter_that_loads_it(tmp_path, keys, advice):
    with pytest.raises(ValueError, match=f"looks like {advice}") as caught:
        SAMSegmenter(checkpoint=checkpoint(tmp_path, keys), model_type="tiny", cache=None)
    assert "vit_l" not in str(caught.value)  # no model_type of SAMSegmenter loads it


@pytest.mark.parametrize(
    ("width", "model_type"), [(768, "vit_b"), (1024, "vit_l"), (1280, "vit_h")]
)
def test_a_segment_anything_checkpoint_names_its_model_type(tmp_path, width, model_type):
    keys = {"image_encoder.patch_embed.proj.weight": (width, 3, 1, 1)}
    with pytest.raises(ValueError, match=f"image encoder {width} wide: model_type='{model_type}'"):
        SAMSegmenter(checkpoint=checkpoint(tmp_path, keys), model_type="tiny", cache=None)
