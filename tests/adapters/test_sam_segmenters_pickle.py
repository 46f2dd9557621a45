"""SAM segmenters pickle (for other processes) however their mask generator is built.

Was: ``pickle.dumps(SAM2Segmenter(...))`` failed with ``Tried to serialize object
__torch__.torch.nn.modules.container.Sequential``: SAM 2's predictor holds TorchScript
transforms, which do not pickle. The generator is now rebuilt from the model and the options.
"""

from __future__ import annotations

import importlib.util
import pickle
import sys
import threading
import types

import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator

from ctc_plugin.adapters.sam import build_tiny_sam

OPTIONS = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


class UnpicklableGenerator(SamAutomaticMaskGenerator):
    """Holds something that does not pickle, as SAM 2's generator holds TorchScript modules."""

    def __init__(self, model, points_per_side=32, pred_iou_thresh=0.8, stability_score_thresh=0.95):
        super().__init__(
            model,
            points_per_side=points_per_side,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
        )
        self.unpicklable = threading.Lock()


@pytest.fixture
def sam2_with_an_unpicklable_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    from segment_anything.modeling import Sam

    modules = {
        "sam2": types.ModuleType("sam2"),
        "sam2.modeling.sam2_base": types.ModuleType("sam2.modeling.sam2_base"),
        "sam2.automatic_mask_generator": types.ModuleType("sam2.automatic_mask_generator"),
    }
    modules["sam2.modeling.sam2_base"].SAM2Base = Sam
    modules["sam2.automatic_mask_generator"].SAM2AutomaticMaskGenerator = UnpicklableGenerator
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_a_segmenter_whose_generator_does_not_pickle_pickles(sam2_with_an_unpicklable_generator):
    from ctc_plugin.adapters.sam2 import SAM2Segmenter

    segmenter = SAM2Segmenter(model=build_tiny_sam(), cache=None, **OPTIONS)
    copy = pickle.loads(pickle.dumps(segmenter))
    assert isinstance(copy.generator, UnpicklableGenerator)
    assert copy.generator.predictor.model is copy.model  # the copy runs its own model
    images = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(copy(images), segmenter(images))
    assert copy.settings_key() == segmenter.settings_key()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("sam2") is None, reason="sam2 is not installed")
def test_a_sam2_segmenter_pickles():  # pragma: no cover - needs sam2
    from sam2.build_sam import build_sam2

    from ctc_plugin.adapters.sam2 import SAM2Segmenter

    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    segmenter = SAM2Segmenter(model=model, cache=None, **OPTIONS)
    copy = pickle.loads(pickle.dumps(segmenter))
    images = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(copy(images), segmenter(images))
