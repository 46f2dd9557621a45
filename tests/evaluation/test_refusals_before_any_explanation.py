"""The evaluation refuses bad arguments before any method runs, and names dtype mistakes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ctc_plugin.adapters.quantus import explain_func
from ctc_plugin.evaluation.arguments import as_maps
from ctc_plugin.evaluation.faithfulness import perturbation_curve
from ctc_plugin.evaluation.protocol import run_protocol
from ctc_plugin.inputs import DtypeMismatchError


def classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()  # fmt: skip


class CountingMethod:
    """A gradient map, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, images, targets, feature_mask):
        self.calls += 1
        return torch.ones(len(images), 1, *images.shape[-2:])


IMAGES = torch.rand(2, 3, 8, 8)
ONE = [("gaussian", "small")]


@pytest.mark.parametrize(
    ("images", "options", "error", "match"),
    [
        (IMAGES * 2.0, {}, ValueError, r"images in \[0, 1\]"),
        (IMAGES, {"segmenter": "slic"}, TypeError, "segmenter must be a callable"),
        (IMAGES, {"seed": 1.5}, ValueError, "seed must be an integer"),
        (IMAGES, {"seed": -1}, ValueError, "seed must be an integer of at least 0"),
    ],
)
def test_run_protocol_refuses_before_the_originals_are_explained(images, options, error, match):
    """The originals were explained (minutes with Lime) before the range was checked; a
    segmenter given as a name failed after that with "'str' object is not callable"; a seed of
    1.5 ran as 1."""
    method = CountingMethod()
    with pytest.raises(error, match=match):
        run_protocol(method, classifier(), images, perturbations=ONE, **options)
    assert method.calls == 0


@pytest.mark.parametrize("metric", ["perturbation_curve", "run_protocol"])
def test_images_of_another_dtype_than_the_model_are_named(metric):
    """torch's "expected scalar type Double but found Float" named neither."""
    images = IMAGES.double()
    with pytest.raises(DtypeMismatchError, match=r"x\.to\(torch\.float32\)"):
        if metric == "perturbation_curve":
            perturbation_curve(classifier(), images, [0, 1], torch.rand(2, 8, 8))
        else:
            run_protocol(CountingMethod(), classifier(), images, perturbations=ONE)


def test_complex_maps_are_refused():
    with pytest.raises(ValueError, match="complex"):
        as_maps(torch.rand(2, 8, 8, dtype=torch.complex64))


def test_quantus_channels_last_inputs_are_named_as_given():
    """The refusal quoted the one-image probe's shape, (1, 8, 8, 3), not the batch's."""
    x = IMAGES.numpy().transpose(0, 2, 3, 1)
    with pytest.raises(ValueError, match=r"got \(2, 8, 8, 3\), which looks channels-last"):
        explain_func(classifier(), x, np.array([0, 1]), method="Saliency")
