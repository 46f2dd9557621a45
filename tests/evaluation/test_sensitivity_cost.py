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


@pytest.mark.parametrize(
    ("images", "options", "message"),
    [
        ((torch.rand(2, 3, 6, 6) * 255).to(torch.uint8), {}, "floating-point"),
        (torch.rand(2, 3, 6, 6), {"radius": math.nan}, "radius must be a finite number"),
        (torch.rand(2, 3, 6, 6), {"n_samples": True}, "n_samples must be an integer"),
        (torch.rand(2, 3, 6, 6), {"n_samples": 2.5}, "n_samples must be an integer"),
    ],
)
def test_max_sensitivity_refuses_what_would_make_its_noise_meaningless(images, options, message):
    """uint8 images turned radius-0.02 noise into 0 (a perfectly 'stable' method) and NaN radii
    returned numbers."""
    with pytest.raises(ValueError, match=message):
        max_sensitivity(saliency, model(), images, 0, **options)


def test_measure_cost_checks_the_model_and_the_targets_as_every_metric():
    from ctc_plugin.inputs import TrainingModeError

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 3))
    before = net[1].running_mean.clone()
    with pytest.raises(TrainingModeError):
        measure_cost(saliency, net.train(), torch.rand(2, 3, 6, 6), torch.tensor([0, 1]))
    assert torch.equal(net[1].running_mean, before)
    with pytest.raises(ValueError, match="target 9 for example 0 is out of range"):
        measure_cost(saliency, net.eval(), torch.rand(2, 3, 6, 6), torch.tensor([9, 1]))


def test_a_grad_cam_error_reaches_the_caller():
    """pytorch-grad-cam's with block swallows an IndexError: the caller got UnboundLocalError."""
    from ctc_plugin.harness.methods import _grad_cam

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).eval()  # fmt: skip
    with pytest.raises(IndexError):
        _grad_cam("GradCAM")(net, torch.rand(2, 3, 8, 8), torch.tensor([9, 9]), None)
    assert all(not m._forward_hooks for m in net.modules())
