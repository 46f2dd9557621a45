"""A SAM model of another SAM package is named by its package, with the segmenter that takes it.

Was: ``model must be a mobile_sam Sam, got Sam`` for segment-anything's ``Sam`` given to
``MobileSAMSegmenter`` (and the same the other way round): both classes are called ``Sam``.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from ctc_plugin.adapters.sam import SAMSegmenter, build_tiny_sam


def model_of_package(module: str, name: str) -> torch.nn.Module:
    """An instance of a module class called ``name`` defined in ``module``."""
    return type(name, (torch.nn.Module,), {"__module__": module})()


@pytest.fixture
def fake_mobile_sam(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in ``mobile_sam`` package with a ``Sam`` class of its own."""
    package = types.ModuleType("mobile_sam")
    modeling = types.ModuleType("mobile_sam.modeling")
    modeling.Sam = type(model_of_package("mobile_sam.modeling.sam", "Sam"))
    package.modeling = modeling
    monkeypatch.setitem(sys.modules, "mobile_sam", package)
    monkeypatch.setitem(sys.modules, "mobile_sam.modeling", modeling)


@pytest.mark.parametrize(
    ("module", "segmenter"),
    [
        ("mobile_sam.modeling.sam", "MobileSAMSegmenter"),
        ("sam2.modeling.sam2_base", "SAM2Segmenter"),
    ],
)
def test_sam_segmenter_names_the_model_s_package_and_its_segmenter(module, segmenter):
    name = "SAM2Base" if module.startswith("sam2") else "Sam"
    with pytest.raises(TypeError, match=rf"got {module}\.{name}; {segmenter} takes it"):
        SAMSegmenter(model=model_of_package(module, name), cache=None)


def test_mobile_sam_segmenter_names_segment_anything_s_sam_and_sam_segmenter(fake_mobile_sam):
    from ctc_plugin.adapters.mobile_sam import MobileSAMSegmenter

    with pytest.raises(TypeError, match=r"got segment_anything\.modeling\.sam\.Sam; SAMSegmenter"):
        MobileSAMSegmenter(model=build_tiny_sam(), cache=None)


def test_a_model_of_no_sam_package_is_named_without_advice():
    with pytest.raises(TypeError, match=r"got torch\.nn\.modules\.linear\.Linear$"):
        SAMSegmenter(model=torch.nn.Linear(2, 2), cache=None)
