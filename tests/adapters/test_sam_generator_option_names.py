"""A generator option the mask generator does not name is refused, also where it would be ignored.

SAM 2's ``SAM2AutomaticMaskGenerator`` takes ``**kwargs`` and drops the ones it does not know, so
a misspelt option (``points_per_sid=8``) was accepted, changed nothing but the cache key, and the
generator ran with its default of 32 points per side.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
from segment_anything import SamAutomaticMaskGenerator

from ctc_plugin.adapters.sam import SAMSegmenter, build_tiny_sam


class KeywordSwallowingGenerator(SamAutomaticMaskGenerator):
    """As sam2's generator: named options, and any other keyword taken and ignored."""

    def __init__(self, model, points_per_side=32, use_m2m=False, **kwargs) -> None:
        super().__init__(model, points_per_side=points_per_side)
        self.use_m2m = use_m2m


@pytest.fixture
def sam2_that_swallows_keywords(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in ``sam2`` package whose model class is segment-anything's ``Sam``."""
    from segment_anything.modeling import Sam

    modules = {
        "sam2": types.ModuleType("sam2"),
        "sam2.modeling.sam2_base": types.ModuleType("sam2.modeling.sam2_base"),
        "sam2.automatic_mask_generator": types.ModuleType("sam2.automatic_mask_generator"),
    }
    modules["sam2.modeling.sam2_base"].SAM2Base = Sam
    modules["sam2.automatic_mask_generator"].SAM2AutomaticMaskGenerator = KeywordSwallowingGenerator
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_a_misspelt_option_is_refused_by_the_sam2_segmenter(sam2_that_swallows_keywords):
    from ctc_plugin.adapters.sam2 import SAM2Segmenter

    with pytest.raises(TypeError, match=r"'points_per_sid'.*points_per_side"):
        SAM2Segmenter(model=build_tiny_sam(), cache=None, points_per_sid=8)
    segmenter = SAM2Segmenter(model=build_tiny_sam(), cache=None, points_per_side=4, use_m2m=True)
    assert segmenter.generator.use_m2m is True  # the options it names still reach it


def test_a_misspelt_option_is_refused_by_the_sam_segmenter():
    with pytest.raises(TypeError, match=r"'points_per_sid'.*points_per_side"):
        SAMSegmenter(model=build_tiny_sam(), cache=None, points_per_sid=8)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("sam2") is None, reason="sam2 is not installed")
def test_a_misspelt_option_is_refused_with_the_real_sam2():  # pragma: no cover - needs sam2
    from sam2.build_sam import build_sam2

    from ctc_plugin.adapters.sam2 import SAM2Segmenter

    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    with pytest.raises(TypeError, match="'points_per_sid'"):
        SAM2Segmenter(model=model, cache=None, points_per_sid=8)
