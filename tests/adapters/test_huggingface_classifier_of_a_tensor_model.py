"""A model that is no transformers classifier is told it needs no wrapper.

Was: a torchvision-style model wrapped by mistake failed at its first call with
``Sequential.forward() got an unexpected keyword argument 'pixel_values'``, and one that takes
``pixel_values`` but returns its logits as a tensor with ``Net returned Tensor, which has no
logits tensor; wrap an image classification model (a *ForImageClassification class) ...``.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.adapters.huggingface import HuggingFaceClassifier


def test_a_model_without_pixel_values_is_told_to_go_unwrapped():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    with pytest.raises(TypeError, match=r"Sequential\.forward takes no pixel_values.*model itself"):
        HuggingFaceClassifier(model)


class LogitsOfPixels(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(12, 3)

    def forward(self, pixel_values):
        return self.linear(pixel_values.flatten(1))


def test_a_model_returning_a_tensor_is_told_to_go_unwrapped():
    with pytest.raises(TypeError, match=r"already returns a tensor \(1, 3\).*model itself"):
        HuggingFaceClassifier(LogitsOfPixels())(torch.rand(1, 3, 2, 2))


def test_a_model_returning_something_else_is_still_told_what_to_wrap():
    class Pairs(torch.nn.Module):
        def forward(self, pixel_values):
            return (pixel_values.sum(), pixel_values.mean())

    with pytest.raises(TypeError, match=r"returned tuple, which has no logits tensor"):
        HuggingFaceClassifier(Pairs())(torch.rand(1, 3, 2, 2))


def test_a_forward_taking_any_keyword_is_accepted():
    class AnyKeyword(torch.nn.Module):
        def forward(self, **inputs):
            return type("Output", (), {"logits": inputs["pixel_values"].flatten(1)[:, :3]})()

    assert HuggingFaceClassifier(AnyKeyword())(torch.rand(1, 3, 2, 2)).shape == (1, 3)
