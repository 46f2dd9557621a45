import pytest
import torch
from captum.attr import InputXGradient, Saliency
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ctc_plugin.evaluation.invariance import ShiftPad2d, input_invariance, shifted_model


class Normalised(nn.Module):
    def __init__(self, conv: nn.Module):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1))
        self.body = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(conv.out_channels * 4, 3)

    def forward(self, x):
        return self.head(self.body((x - self.mean) / self.std))


@settings(max_examples=15, deadline=None)
@given(
    shift=st.floats(-1.0, 1.0),
    padding=st.integers(0, 2),
    bias=st.booleans(),
    stride=st.integers(1, 2),
    normalise=st.booleans(),
)
def test_shifted_copy_is_exact(shift, padding, bias, stride, normalise):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=stride, padding=padding, bias=bias)
    model = Normalised(conv) if normalise else nn.Sequential(conv, nn.ReLU(), nn.Flatten())
    x = torch.rand(2, 3, 9, 9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = shifted_model(model, shift, x)
    torch.testing.assert_close(copy(x + shift), model(x), atol=1e-5, rtol=1e-5)
    for key, value in model.state_dict().items():  # the original is untouched
        assert torch.equal(value, before[key])


def test_linear_first_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.rand(4, 3, 2, 2)
    torch.testing.assert_close(shifted_model(model, 0.7, x)(x + 0.7), model(x))


def captum_method(cls):
    def method(model, images, targets, feature_mask):
        return (
            cls(model)
            .attribute(images.clone().requires_grad_(), target=targets)
            .sum(1, keepdim=True)
        )

    return method


def test_gradient_is_invariant_input_x_gradient_is_not():
    torch.manual_seed(0)
    model = Normalised(nn.Conv2d(3, 4, 3, padding=1)).eval()
    x = torch.rand(3, 3, 8, 8)
    saliency = input_invariance(captum_method(Saliency), model, x, shift=-0.5)
    ixg = input_invariance(captum_method(InputXGradient), model, x, shift=-0.5)
    assert saliency.model_gap < 1e-4
    assert saliency.differences.max() < 1e-4
    assert ixg.differences.min() > 0.05


def test_preprocessing_that_is_not_affine_is_rejected():
    class Squares(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x**2).flatten(1)

    with pytest.raises(ValueError, match="per-channel constant"):
        shifted_model(Squares(), 0.5, torch.rand(1, 3, 5, 5))


@pytest.mark.parametrize(("groups", "channels_in", "channels_out"), [(2, 4, 6), (4, 4, 8)])
def test_grouped_first_convolution(groups, channels_in, channels_out):
    torch.manual_seed(0)
    conv = nn.Conv2d(channels_in, channels_out, 3, padding=1, groups=groups)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten())
    x = torch.rand(2, channels_in, 5, 5)
    torch.testing.assert_close(shifted_model(model, 0.5, x)(x + 0.5), model(x))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_that_repeats_the_image_is_compensated_by_the_bias_alone(mode):
    """Such padding of x + shift is the padding of x, shifted: once refused, now exact."""
    torch.manual_seed(0)
    model = Normalised(nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode)).eval()
    x = torch.rand(2, 3, 8, 8)
    copy = shifted_model(model, -0.5, x)
    torch.testing.assert_close(copy(x - 0.5), model(x), atol=1e-5, rtol=1e-5)
    result = input_invariance(captum_method(Saliency), model, x, shift=-0.5)
    assert result.differences.max() < 1e-4


def test_a_model_that_reads_its_raw_input_again_voids_the_test_and_is_refused():
    """The copy's logits differed by 0.125 and the test reported a difference of 0."""

    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head((self.conv(x) + x.mean(1, keepdim=True)).mean((2, 3)))

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="not the same function: its logits at images -0.5"):
        input_invariance(captum_method(Saliency), Skip().eval(), torch.rand(2, 3, 8, 8))


def test_integrative_cam_is_invariant_only_without_its_bias_terms():
    """The page said every CAM is invariant by construction; Integrative CAM's FullGrad bias
    terms read the first layer's bias, which the shifted copy changes to absorb the shift."""
    from ctc_plugin.cam.integrative import IntegrativeCAM

    def cam(bias):
        def method(model, images, target, feature_mask):
            return IntegrativeCAM(model, bias=bias).attribute(images, target=target).detach()

        return method

    torch.manual_seed(0)
    model = Normalised(nn.Conv2d(3, 4, 3, padding=1)).eval()
    x = torch.rand(2, 3, 8, 8)
    assert input_invariance(cam(False), model, x, shift=-0.5).differences.max() < 1e-4
    assert input_invariance(cam(True), model, x, shift=-0.5).differences.min() > 1e-3


@pytest.mark.parametrize("training", [False, True])
def test_the_shifted_copy_keeps_every_modules_mode(training):
    """The padding module and its wrapper were new modules in training mode inside a copy of a
    model in eval mode: the copy was not, as documented, in the model's mode."""
    model = Normalised(nn.Conv2d(3, 4, 3, padding=1)).train(training)
    copy = shifted_model(model, -0.5, torch.rand(1, 3, 6, 6))
    assert any(isinstance(module, ShiftPad2d) for module in copy.modules())
    assert all(module.training == training for module in copy.modules())


@pytest.mark.parametrize("bias", [False, True])
def test_the_shifted_copy_of_a_frozen_model_stays_frozen(bias):
    """The new first-layer bias was a fresh parameter requiring gradients in a frozen model."""
    model = Normalised(nn.Conv2d(3, 4, 3, padding=1, bias=bias)).eval().requires_grad_(False)
    copy = shifted_model(model, -0.5, torch.rand(1, 3, 6, 6))
    assert not any(parameter.requires_grad for parameter in copy.parameters())
