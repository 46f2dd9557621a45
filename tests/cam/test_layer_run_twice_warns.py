"""A chosen layer that runs more than once is explained at every call, with a warning.

torchvision's BasicBlock calls its ``relu`` twice. Captum's layer methods explain the last call
and pytorch-grad-cam's the first; Integrative CAM fuses both and says so.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision

from ctc_plugin import IntegrativeCAM


def test_a_layer_called_twice_is_named_with_its_calls():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.rand(1, 3, 64, 64)
    with pytest.warns(UserWarning, match=r"'layer1.0.relu' \(2 calls\).*choose the block"):
        _, maps = IntegrativeCAM(model, layers=[model.layer1[0].relu]).attribute(
            x, target=0, return_layer_maps=True
        )
    assert maps.names == ["layer1.0.relu#1", "layer1.0.relu#2"]  # its calls numbered
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the block runs once: no warning
        IntegrativeCAM(model, layers=[model.layer1[0]]).attribute(x, target=0)


def test_the_warning_points_at_the_callers_line():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    with pytest.warns(UserWarning, match="more than once") as caught:
        IntegrativeCAM(model, layers=[model.layer1[0].relu]).attribute(torch.rand(1, 3, 64, 64), 0)
    assert caught[0].filename == __file__


def test_two_modules_of_one_type_behind_a_forward_function_are_not_one_module_run_twice():
    """Behind a lambda, layers are named by type: two Conv2d are still two modules."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    layers = [model.layer1[0].conv1, model.layer1[1].conv1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        IntegrativeCAM(lambda t: model(t), layers=layers).attribute(torch.rand(1, 3, 64, 64), 0)


def test_a_forward_function_that_runs_the_model_twice_can_silence_the_warning():
    """Test-time augmentation fuses both calls on purpose; its warning has a category."""
    from ctc_plugin.cam import LayerCalledAgainWarning

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    twice = lambda t: (model(t) + model(t.flip(-1))) / 2  # noqa: E731
    x = torch.rand(1, 3, 64, 64)
    with pytest.warns(LayerCalledAgainWarning, match="test-time augmentation"):
        IntegrativeCAM(twice, layers=[model.layer4]).attribute(x, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=LayerCalledAgainWarning)
        IntegrativeCAM(twice, layers=[model.layer4]).attribute(x, 0)


def test_the_warning_points_at_the_callers_line_through_pytorch_grad_cam_too():
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from ctc_plugin.adapters.gradcam import IntegrativeGradCAM

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    with IntegrativeGradCAM(model, [model.layer1[0].relu]) as cam:
        with pytest.warns(UserWarning, match="more than once") as caught:
            cam(input_tensor=torch.rand(1, 3, 64, 64), targets=[ClassifierOutputTarget(0)])
    assert caught[0].filename == __file__
