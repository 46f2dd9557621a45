"""SAM 2 and MobileSAM checkpoint errors name their own class and files, not SAMSegmenter's."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from ctc_plugin.adapters.sam import build_tiny_sam


@pytest.fixture
def fake_mobile_sam(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in ``mobile_sam`` package whose registry builds the tiny SAM as ``vit_t``."""
    module = types.ModuleType("mobile_sam")
    module.sam_model_registry = {"vit_t": lambda checkpoint=None: build_tiny_sam()}
    module.SamAutomaticMaskGenerator = object
    monkeypatch.setitem(sys.modules, "mobile_sam", module)


@pytest.fixture
def fake_sam2(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in ``sam2`` package whose ``build_sam2`` builds the tiny SAM."""
    package = types.ModuleType("sam2")
    build = types.ModuleType("sam2.build_sam")
    build.build_sam2 = lambda config, ckpt_path=None, device="cpu", mode="eval": build_tiny_sam()
    monkeypatch.setitem(sys.modules, "sam2", package)
    monkeypatch.setitem(sys.modules, "sam2.build_sam", build)


def _wrong_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "not_this_model.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    return path


def test_mobile_sam_messages_name_mobile_sam(fake_mobile_sam, tmp_path: Path):
    from ctc_plugin.adapters.mobile_sam import MobileSAMSegmenter

    for options, error in (
        ({}, ValueError),
        ({"checkpoint": tmp_path / "x.pt"}, FileNotFoundError),
    ):
        with pytest.raises(error) as caught:
            MobileSAMSegmenter(cache=None, **options)
        message = str(caught.value)
        assert "MobileSAMSegmenter" in message and "mobile_sam.pt" in message
        assert "SAMSegmenter (" not in message and "sam_vit_b" not in message
    with pytest.raises(ValueError, match="MobileSAM checkpoint .*model_type='vit_t'") as caught:
        MobileSAMSegmenter(checkpoint=_wrong_checkpoint(tmp_path), cache=None)
    assert "vit_l" not in str(caught.value) and len(str(caught.value)) < 800


def test_sam2_messages_name_sam2(fake_sam2, tmp_path: Path):
    from ctc_plugin.adapters.sam2 import SAM2Segmenter

    for options, error in (
        ({}, ValueError),
        ({"checkpoint": tmp_path / "x.pt"}, FileNotFoundError),
    ):
        with pytest.raises(error) as caught:
            SAM2Segmenter(cache=None, **options)
        message = str(caught.value)
        assert "SAM2Segmenter" in message and "sam2.1_hiera_tiny.pt" in message
        assert "sam_vit_b" not in message
    with pytest.raises(ValueError, match="SAM 2 checkpoint .*does not match") as caught:
        SAM2Segmenter(checkpoint=_wrong_checkpoint(tmp_path), cache=None)
    assert "configs/sam2.1/" in str(caught.value) and "vit_h" not in str(caught.value)


def test_sam_messages_still_name_sam_and_the_flag(tmp_path: Path):
    from ctc_plugin.adapters.sam import SAMSegmenter

    with pytest.raises(ValueError, match=r"SAMSegmenter.*--sam-checkpoint.*sam_vit_b"):
        SAMSegmenter(cache=None)
    with pytest.raises(ValueError, match="does not match model_type='tiny'.*vit_b, vit_l or vit_h"):
        SAMSegmenter(checkpoint=_wrong_checkpoint(tmp_path), model_type="tiny", cache=None)
