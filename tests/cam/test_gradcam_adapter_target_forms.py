"""IntegrativeGradCAM refuses targets that are no list of per-image targets, saying what to pass.

pytorch-grad-cam's methods take ``targets`` as a list with one callable per image; a single
``ClassifierOutputTarget`` or a bare class index is a common slip, which failed with Python's
``'int' object is not iterable``.
"""

from __future__ import annotations

import pytest
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ctc_plugin.adapters.gradcam import IntegrativeGradCAM
from tests.cam.cam_models import tiny_cnn


@pytest.mark.parametrize("targets", [1, ClassifierOutputTarget(1)], ids=["int", "one target"])
def test_a_single_target_is_refused_with_the_list_to_pass(targets) -> None:
    model = tiny_cnn()
    with IntegrativeGradCAM(model) as cam:
        with pytest.raises(TypeError, match=r"one pytorch-grad-cam target per image.*\[Classi"):
            cam(input_tensor=torch.rand(2, 3, 16, 16), targets=targets)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
