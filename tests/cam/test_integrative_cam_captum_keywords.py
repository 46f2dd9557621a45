"""Keywords of Captum's ``LayerGradCam`` and pytorch-grad-cam get what to do with Integrative CAM.

A user moving from ``LayerGradCam(model, layer).attribute(x, target, relu_attributions=True)``
got Python's bare ``unexpected keyword argument``; each such keyword now says what it comes to
here.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin import IntegrativeCAM
from tests.cam.cam_models import tiny_cnn


@pytest.mark.parametrize(
    ("keyword", "said"),
    [
        ("relu_attributions", r"in \[0, 1\] already"),
        ("attribute_to_layer_input", r"layers=\[the module that computes that input\]"),
        ("attr_dim_summation", r"one channel already"),
    ],
)
def test_layer_grad_cam_keywords_of_attribute_say_what_to_do(keyword: str, said: str) -> None:
    model = tiny_cnn()
    with pytest.raises(TypeError, match=rf"does not take {keyword}=.*{said}"):
        IntegrativeCAM(model).attribute(torch.rand(1, 3, 16, 16), target=1, **{keyword: True})


@pytest.mark.parametrize("keyword", ["layer", "target_layers"])
def test_a_layer_keyword_of_the_constructor_says_layers(keyword: str) -> None:
    model = tiny_cnn()
    with pytest.raises(TypeError, match=rf"does not take {keyword}=.*layers=\[module\]"):
        IntegrativeCAM(model, **{keyword: model.features[0]})
