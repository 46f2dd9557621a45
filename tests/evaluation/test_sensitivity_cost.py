import math

import pytest
import torch
from captum.attr import Saliency
from captum.metrics import sensitivity_max
from torch import nn

from ctc_plugin.evaluation.sensitivity import max_sensitivity, measure_cost


def model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    ).eval()


def saliency(net, images, targets, feature_mask):
    return (
        Saliency(net)
        .attribute(images.clone().requires_grad_(), target=targets, abs=False)
        .sum(1, keepdim=True)
    )


def test_agrees_with_captum_sensitivity_max():
    net, x = model(), torch.rand(3, 3, 6, 6)
    targets = torch.tensor([0, 1, 2])
    radius, n = 0.05, 4
    ours = max_sensitivity(saliency, net, x, targets, radius=radius, n_samples=n)
    g = torch.Generator().manual_seed(0)
    noises = [(torch.rand(x.shape, generator=g) * 2 - 1) * radius for _ in range(n)]
    it = iter(noises)

    def first(inputs):
        return inputs[0] if isinstance(inputs, tuple) else inputs

    def perturb(inputs):
        return first(inputs) + next(it)

    def explain(inputs, target):
        # a tuple: Captum iterates over what the function returns, expecting one entry per input
        return (saliency(net, first(inputs), target, None),)

    theirs = sensitivity_max(
        explain,
        x,
        perturb_func=perturb,
        n_perturb_samples=n,
        max_examples_per_batch=3,
        target=targets,
    )
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-5, atol=1e-6)


def test_constant_method_has_zero_sensitivity():
    def constant(net, images, targets, feature_mask):
        return torch.ones(len(images), 1, *images.shape[2:])

    out = max_sensitivity(constant, model(), torch.rand(2, 3, 6, 6), n_samples=2)
    assert torch.equal(out, torch.zeros(2, dtype=torch.float64))


def test_measure_cost_returns_maps_and_numbers():
    maps, cost = measure_cost(saliency, model(), torch.rand(2, 3, 6, 6), torch.tensor([0, 1]))
    assert maps.shape == (2, 1, 6, 6)
    assert cost.seconds_per_image > 0
    assert math.isnan(cost.peak_memory_mib) or cost.peak_memory_mib >= 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="radius"):
        max_sensitivity(saliency, model(), torch.rand(1, 3, 6, 6), radius=-1)
