"""explain_func refuses what would change its meaning or the model rather than ignore it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ctc_plugin.adapters.quantus import explain_func
from ctc_plugin.inputs import TrainingModeError


def _cnn(softmax: bool = False, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, padding=1)]
    layers += [nn.BatchNorm2d(4)] if batchnorm else []
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)]
    layers += [nn.Softmax(dim=-1)] if softmax else []
    return nn.Sequential(*layers).eval()


def _batch() -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 8, 8, generator=g).numpy(), np.array([0, 2])


def test_softmax_true_is_refused_on_a_model_that_returns_logits():
    x, y = _batch()
    with pytest.raises(ValueError, match="softmax=True.*no softmax"):
        explain_func(_cnn(), x, y, method="Saliency", softmax=True)


def test_softmax_false_is_refused_on_a_model_that_ends_in_softmax():
    x, y = _batch()
    with pytest.raises(ValueError, match="softmax=False.*without its"):
        explain_func(_cnn(softmax=True), x, y, method="Saliency", softmax=False)


def test_a_softmax_the_model_already_matches_is_accepted():
    x, y = _batch()
    plain = explain_func(_cnn(), x, y, method="Saliency")
    logits = explain_func(_cnn(), x, y, method="Saliency", softmax=False)
    np.testing.assert_array_equal(logits, plain)
    probabilities = explain_func(_cnn(softmax=True), x, y, method="Saliency", softmax=True)
    assert probabilities.shape == (2, 1, 8, 8)


def test_a_method_for_other_models_is_refused_not_run():
    """AttnLRP (torchvision ViT blocks only) on a CNN returned gradient x input under its name."""
    pytest.importorskip("lxt")
    x, y = _batch()
    with pytest.raises(ValueError, match="'AttnLRP' does not apply to Sequential.*'Saliency'"):
        explain_func(_cnn(), x, y, method="AttnLRP")


def test_a_model_in_training_mode_is_refused_and_left_unchanged():
    model = _cnn(batchnorm=True).train()
    statistics = model[1].running_mean.clone()
    x, y = _batch()
    for method in ("Saliency", "GradCAM"):
        with pytest.raises(TrainingModeError, match="eval"):
            explain_func(model, x, y, method=method)
    assert model.training and int(model[1].num_batches_tracked) == 0
    assert torch.equal(model[1].running_mean, statistics)


def test_inputs_with_nan_are_refused_not_explained_as_nan_maps():
    x, y = _batch()
    x[1, 0, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite.*example 1"):
        explain_func(_cnn(), x, y, method="GradCAM")


class _FunctionalSoftmax(nn.Module):
    """Probabilities from ``F.softmax`` in forward, an ``nn.Softmax`` registered elsewhere."""

    def __init__(self, probabilities: bool) -> None:
        super().__init__()
        self.probabilities = probabilities
        self.conv, self.fc, self.gate = (
            nn.Conv2d(3, 4, 3, padding=1),
            nn.Linear(4, 3),
            nn.Softmax(1),
        )

    def forward(self, x):
        h = torch.relu(self.conv(x))
        logits = self.fc((h * self.gate(h)).mean((2, 3)))
        return torch.softmax(logits, 1) if self.probabilities else logits


@pytest.mark.parametrize("probabilities", [True, False])
def test_softmax_is_read_from_the_output_not_from_the_last_module(probabilities):
    x, y = torch.rand(2, 3, 8, 8), [0, 1]
    model = _FunctionalSoftmax(probabilities).eval()
    maps = explain_func(model, x, y, method="Saliency", softmax=probabilities)
    assert maps.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match=f"softmax={not probabilities}"):
        explain_func(model, x, y, method="Saliency", softmax=not probabilities)


def test_a_float64_model_is_explained_in_its_dtype():
    """The images were always cast to float32: a float64 model failed with torch's dtype error."""
    x, y = _batch()
    maps = explain_func(_cnn().double(), x, y, method="Saliency")
    expected = explain_func(_cnn(), x, y, method="Saliency")
    assert maps.shape == (2, 1, 8, 8)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)


def test_grad_cam_leaves_every_module_in_its_own_mode():
    """Fine-tuning with frozen BatchNorms: pytorch-grad-cam's model.eval() was undone with one
    model.train(True), which set the frozen BatchNorms training (the next step moved their
    statistics)."""
    model = _cnn(batchnorm=True).train()
    model[1].eval()  # the BatchNorm frozen
    x, y = _batch()
    explain_func(model, x, y, method="GradCAM")
    assert model.training and not model[1].training


def test_a_hugging_face_classifier_takes_the_mode_of_the_model_it_wraps():
    """The wrapper was in training mode around a model in eval mode: Grad-CAM put the whole
    model in training mode (drop path on), Quantus refused it."""
    transformers = pytest.importorskip("transformers")
    from ctc_plugin.adapters.huggingface import HuggingFaceClassifier

    config = transformers.ConvNextConfig(
        hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=5, drop_path_rate=0.1
    )
    torch.manual_seed(0)
    inner = transformers.ConvNextForImageClassification(config).eval()
    model = HuggingFaceClassifier(inner)
    assert not model.training
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).numpy()
    explain_func(model, x, np.array([0, 1]), method="GradCAM")
    assert not any(module.training for module in model.modules())
    mixed = transformers.ConvNextForImageClassification(config).train()
    mixed.convnext.eval()  # a mixed model: the wrapper takes its flag and changes no other
    assert HuggingFaceClassifier(mixed).training and not mixed.convnext.training


def _hugging_face_vit():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, num_hidden_layers=1, hidden_size=16,
        num_attention_heads=2, intermediate_size=32, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(config).eval()


@pytest.mark.parametrize("method", ["Saliency", "GradCAM", "CTC-proportional"])
def test_an_unwrapped_hugging_face_model_is_told_to_wrap(method):
    """'ImageClassifierOutput' object has no attribute 'shape' (or 'str' ...) came through."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).numpy()
    with pytest.raises(ValueError, match=r"\.logits .*HuggingFaceClassifier\(model\)$"):
        explain_func(_hugging_face_vit(), x, np.array([0, 1]), method=method)  # no lambda


def test_an_attributor_on_an_unwrapped_hugging_face_model_is_told_to_wrap():
    from ctc_plugin import CTCAttributor, CTCComposite
    from ctc_plugin.testing import random_partition

    model = _hugging_face_vit()
    attributor = CTCAttributor(model, CTCComposite(), feature_mask=random_partition(32, 32, 4))
    with pytest.raises(ValueError, match=r"\.logits .*HuggingFaceClassifier\(model\)"):
        attributor(torch.rand(1, 3, 32, 32), torch.eye(3)[[1]])
    assert not any(module._forward_hooks for module in model.modules())


@pytest.mark.parametrize("method", ["CTC-proportional", "FeatureAblation"])
def test_a_feature_mask_of_fractional_ids_is_refused_not_truncated(method):
    """A label map resized with bilinear interpolation holds fractional ids along the borders
    (0.083, 0.25, ...): cast to integers they were truncated into features the mask never had
    (a strip of 0.75s joined feature 0), and every method ran on them. Float masks of whole
    numbers (as NumPy keeps them) are taken as they are."""
    x, y = _batch()
    cells = torch.arange(4.0).view(1, 1, 2, 2)
    resized = torch.nn.functional.interpolate(cells, size=(8, 8), mode="bilinear").numpy()
    with pytest.raises(ValueError, match=r"feature_mask holds .*non-integer.*mode='nearest'"):
        explain_func(_cnn(), x, y, method=method, feature_mask=resized)
    nearest = torch.nn.functional.interpolate(cells, size=(8, 8), mode="nearest").numpy()
    as_floats = explain_func(_cnn(), x, y, method=method, feature_mask=nearest)
    as_integers = explain_func(_cnn(), x, y, method=method, feature_mask=nearest.astype(np.int64))
    np.testing.assert_array_equal(as_floats, as_integers)
    with pytest.raises(ValueError, match="non-integer"):
        explain_func(_cnn(), x, y, method=method, feature_mask=np.full((1, 1, 8, 8), np.nan))


@pytest.mark.parametrize(
    "shape", [(1, 1, 4, 4), (3, 1, 8, 8), (2, 2, 8, 8), (1, 8, 8, 1), (1, 1, 1, 8, 8)]
)
def test_a_feature_mask_that_does_not_fit_the_batch_is_refused_for_every_method(shape):
    """Captum's methods got the mask as it was and failed in torch's expand or in the
    ablation ("The expanded size of the tensor (2) must match ..."); CTC named its own rule.
    Every method now gets one message with the forms that fit, and an (H, W) map is one map
    for every image, as CTC took it already."""
    x, y = _batch()
    for method in ("CTC-proportional", "FeatureAblation"):
        with pytest.raises(
            ValueError, match=r"feature_mask of shape .* \(1, 1, 8, 8\).*\(2, 1, 8, 8\)"
        ):
            explain_func(_cnn(), x, y, method=method, feature_mask=np.zeros(shape, np.int64))
    cells = np.arange(64).reshape(8, 8) // 16
    for method in ("CTC-proportional", "FeatureAblation"):
        np.testing.assert_array_equal(
            explain_func(_cnn(), x, y, method=method, feature_mask=cells),
            explain_func(_cnn(), x, y, method=method, feature_mask=cells[None, None]),
        )
