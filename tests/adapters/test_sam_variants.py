"""Optional SAM 2 and MobileSAM adapters: a missing package is a clear ImportError."""

from __future__ import annotations

import importlib.util
import sys

import pytest


@pytest.mark.parametrize(
    "module, cls, package, pip_hint",
    [
        ("ctc_plugin.adapters.sam2", "SAM2Segmenter", "sam2", "pip install sam2"),
        ("ctc_plugin.adapters.mobile_sam", "MobileSAMSegmenter", "mobile_sam", "MobileSAM"),
    ],
)
def test_missing_package_names_what_to_install(monkeypatch, module, cls, package, pip_hint):
    adapter = importlib.import_module(module)  # importing the adapter itself needs nothing
    monkeypatch.setitem(sys.modules, package, None)  # make the import fail even if installed
    with pytest.raises(ImportError, match=pip_hint):
        getattr(adapter, cls)(checkpoint="model.pt")


@pytest.mark.skipif(importlib.util.find_spec("sam2") is None, reason="sam2 is not installed")
def test_sam2_needs_a_checkpoint():  # pragma: no cover - only where sam2 is installed
    from ctc_plugin.adapters.sam2 import SAM2Segmenter

    with pytest.raises(ValueError, match="checkpoint="):
        SAM2Segmenter()


@pytest.mark.skipif(
    importlib.util.find_spec("mobile_sam") is None, reason="mobile_sam is not installed"
)
def test_mobile_sam_needs_a_checkpoint():  # pragma: no cover - only where mobile_sam is installed
    from ctc_plugin.adapters.mobile_sam import MobileSAMSegmenter

    with pytest.raises(ValueError, match="checkpoint="):
        MobileSAMSegmenter()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("sam2") is None, reason="sam2 is not installed")
def test_sam2_segments_with_a_checkpoint_the_test_writes(tmp_path):  # pragma: no cover
    """A randomly initialised SAM 2 (hiera tiny) saved, loaded and run end to end (~10 s)."""
    import torch
    from sam2.build_sam import build_sam2

    from ctc_plugin.adapters.sam import build_tiny_sam
    from ctc_plugin.adapters.sam2 import SAM2Segmenter

    config = "configs/sam2.1/sam2.1_hiera_t.yaml"
    torch.manual_seed(0)
    path = tmp_path / "sam2_random.pt"
    torch.save({"model": build_sam2(config, None, device="cpu").state_dict()}, path)
    segmenter = SAM2Segmenter(
        checkpoint=path,
        model_type=config,
        cache=False,
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    images = torch.rand(1, 3, 48, 64)
    partition = segmenter(images)
    assert partition.shape == (1, 1, 48, 64) and partition.dtype == torch.long
    ids = partition.unique()
    assert torch.equal(ids, torch.arange(len(ids)))  # every pixel in exactly one feature

    wrong = tmp_path / "segment_anything_tiny.pt"
    torch.save(build_tiny_sam().state_dict(), wrong)
    with pytest.raises(ValueError, match="does not match"):
        SAM2Segmenter(checkpoint=wrong, model_type=config)
