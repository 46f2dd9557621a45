"""A SAM 2 ``model_type`` that names no config sam2 can find is a ValueError listing the configs.

Was: hydra's ``MissingConfigException: Cannot find primary config 'vit_b'. Check that it's in
your config search path.`` followed by hydra's search path, for the segment-anything habit
``model_type="vit_b"`` or a checkpoint's name.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator

from ctc_plugin.adapters.sam import build_tiny_sam


class MissingConfigException(IOError):
    """Stands for ``hydra.errors.MissingConfigException``."""


@pytest.fixture
def sam2_without_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in ``sam2`` whose ``build_sam2`` knows one config, as hydra composes them."""

    def build_sam2(config, ckpt_path=None, device="cpu", mode="eval"):
        if config != "configs/sam2.1/sam2.1_hiera_t.yaml":
            raise MissingConfigException(f"Cannot find primary config '{config}'")
        return build_tiny_sam()

    modules = {
        "sam2": types.ModuleType("sam2"),
        "sam2.build_sam": types.ModuleType("sam2.build_sam"),
        "sam2.automatic_mask_generator": types.ModuleType("sam2.automatic_mask_generator"),
        "hydra": types.ModuleType("hydra"),
        "hydra.errors": types.ModuleType("hydra.errors"),
    }
    modules["sam2.build_sam"].build_sam2 = build_sam2
    modules["sam2.automatic_mask_generator"].SAM2AutomaticMaskGenerator = SamAutomaticMaskGenerator
    modules["hydra.errors"].MissingConfigException = MissingConfigException
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_an_unknown_config_says_what_model_type_is(sam2_without_the_config, tmp_path: Path):
    from ctc_plugin.adapters.sam2 import SAM2Segmenter

    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": build_tiny_sam().state_dict()}, checkpoint)
    with pytest.raises(ValueError, match=r"model_type='vit_b' is no SAM 2 config.*sam2\.1_hiera_t"):
        SAM2Segmenter(checkpoint=checkpoint, model_type="vit_b", cache=None)
    SAM2Segmenter(checkpoint=checkpoint, cache=None)  # the default config builds


@pytest.mark.skipif(importlib.util.find_spec("sam2") is None, reason="sam2 is not installed")
def test_the_real_sam2_lists_its_configs(tmp_path: Path):  # pragma: no cover - needs sam2
    from ctc_plugin.adapters.sam2 import SAM2Segmenter

    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": {}}, checkpoint)
    with pytest.raises(ValueError, match=r"configs/sam2\.1/sam2\.1_hiera_l\.yaml"):
        SAM2Segmenter(checkpoint=checkpoint, model_type="sam2.1_hiera_tiny", cache=None)
