"""``min_mask_region_area > 0`` without OpenCV is refused when the segmenter is built, saying so.

segment-anything and SAM 2 remove small regions with ``cv2``, which ctc-plugin does not depend
on. Was: segment-anything's bare ``No module named 'cv2'`` when built, and SAM 2's only after
the model had run on the first image.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from ctc_plugin.adapters.sam import SAMSegmenter, build_tiny_sam


@pytest.fixture
def without_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 fails, installed or not


def test_sam_says_what_to_install_or_leave_out(without_opencv):
    with pytest.raises(ValueError, match=r"min_mask_region_area=20 needs OpenCV.*opencv-python"):
        SAMSegmenter(model=build_tiny_sam(), cache=None, min_mask_region_area=20)
    SAMSegmenter(model=build_tiny_sam(), cache=None, min_mask_region_area=0)  # the default


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("sam2") is None, reason="sam2 is not installed")
def test_sam2_refuses_it_before_the_model_runs(without_opencv):  # pragma: no cover - needs sam2
    from sam2.build_sam import build_sam2

    from ctc_plugin.adapters.sam2 import SAM2Segmenter

    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    with pytest.raises(ValueError, match="needs OpenCV"):
        SAM2Segmenter(model=model, cache=None, min_mask_region_area=20)
