"""Every metric that calls an explanation method refuses maps with NaN or infinity, naming the
method and the images, instead of returning NaN scores (which means over images then skip)."""

import pytest
import torch
from torch import nn

from ctc_plugin.evaluation.invariance import input_invariance
from ctc_plugin.evaluation.protocol import run_protocol
from ctc_plugin.evaluation.sanity import cascading_randomisation
from ctc_plugin.evaluation.sensitivity import max_sensitivity, measure_cost


def model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)
    ).eval()


def broken_on_image_one(net, images, targets, feature_mask):
    maps = images.mean(1, keepdim=True).clone()
    maps[1, 0, 2, 2] = float("nan") if len(images) > 2 else float("inf")
    return maps


@pytest.mark.parametrize(
    "metric",
    [
        max_sensitivity,
        cascading_randomisation,
        input_invariance,
        lambda *args: run_protocol(*args, perturbations=[("blur", "small")]),
        measure_cost,
    ],
    ids=["max_sensitivity", "cascading_randomisation", "input_invariance", "protocol", "cost"],
)
@pytest.mark.parametrize("images", [2, 3])
def test_non_finite_maps_are_refused(metric, images):
    x = torch.rand(images, 3, 6, 6)
    with pytest.raises(ValueError, match=r"'broken_on_image_one' returned NaN or infinite .*\[1\]"):
        metric(broken_on_image_one, model(), x, torch.zeros(images, dtype=torch.long))
