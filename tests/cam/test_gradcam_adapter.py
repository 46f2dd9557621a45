"""IntegrativeGradCAM inside pytorch-grad-cam: targets, show_cam_on_image, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAMPlusPlus
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ctc_plugin import IntegrativeCAM
from ctc_plugin.adapters.gradcam import IntegrativeGradCAM
from tests.cam.cam_models import tiny_cnn


def test_same_maps_as_integrative_cam_with_gradcam_targets() -> None:
    model = tiny_cnn()
    x = torch.rand(2, 3, 16, 16)
    with IntegrativeGradCAM(model) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
    assert maps.dtype == np.float32 and maps.shape == (2, 16, 16)
    expected = IntegrativeCAM(model).attribute(x, target=[1, 3])[:, 0].numpy()
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_one_layer_configuration_is_gradcampp() -> None:
    model = tiny_cnn(inplace=False)
    layer = model.features[6]
    x = torch.rand(2, 3, 16, 16)
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(2)]
    with IntegrativeGradCAM(model, [layer], bias=False, layer_weights="uniform") as cam:
        ours = cam(input_tensor=x, targets=targets)
    with GradCAMPlusPlus(model, [layer]) as cam:
        theirs = cam(input_tensor=x, targets=targets)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_overlay_metric_and_smoothing_work() -> None:
    model = tiny_cnn()
    x = torch.rand(2, 3, 16, 16)
    targets = [ClassifierOutputTarget(2)] * 2
    with IntegrativeGradCAM(model) as cam:
        maps = cam(input_tensor=x, targets=targets)
        smoothed = cam(input_tensor=x, targets=targets, aug_smooth=True)
        with pytest.raises(ValueError, match="eigen_smooth"):
            cam(input_tensor=x, targets=targets, eigen_smooth=True)
    assert smoothed.shape == maps.shape
    overlay = show_cam_on_image(x[0].permute(1, 2, 0).numpy(), maps[0], use_rgb=True)
    assert overlay.shape == (16, 16, 3) and overlay.dtype == np.uint8
    scores = CamMultImageConfidenceChange()(x, maps, targets, model)
    assert np.isfinite(scores).all() and scores.shape == (2,)


def test_missing_grad_cam_is_a_clear_import_error() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pytorch_grad_cam'] = None; "
        "sys.modules['pytorch_grad_cam.base_cam'] = None\n"
        "try:\n    import ctc_plugin.adapters.gradcam\n"
        "except ImportError as error:\n    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "pip install grad-cam" in result.stdout


def test_the_third_positional_argument_is_the_reshape_transform_as_in_pytorch_grad_cam() -> None:
    """It was phi: a reshape given by position became phi and was never applied."""
    model = tiny_cnn()
    layer = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    calls = []

    def reshape(tensor):
        calls.append(tuple(tensor.shape))
        return tensor

    x = torch.rand(1, 3, 16, 16)
    with IntegrativeGradCAM(model, [layer], reshape) as cam:
        cam(input_tensor=x, targets=[ClassifierOutputTarget(1)])
    assert calls  # the reshape ran on the layer's output
    with pytest.raises(TypeError):
        IntegrativeGradCAM(model, [layer], None, "identity")  # phi is keyword-only


def test_tta_transforms_reach_aug_smooth() -> None:
    import ttach

    model, x = tiny_cnn(), torch.rand(1, 3, 16, 16)
    flips = ttach.Compose([ttach.HorizontalFlip()])
    with IntegrativeGradCAM(model, tta_transforms=flips) as cam:
        smoothed = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)], aug_smooth=True)
    with IntegrativeGradCAM(model) as cam:
        plain = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)])
        flipped = cam(input_tensor=x.flip(-1), targets=[ClassifierOutputTarget(1)])
    np.testing.assert_allclose(smoothed, (plain + flipped[..., ::-1]) / 2, atol=1e-5)
