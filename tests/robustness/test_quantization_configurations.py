"""Every method on models prepared for quantization or quantized (``torch.ao.quantization``).

- Observers (``prepare``) and fake quantizers with their observer on (``prepare_qat``) record
  the range of every batch they see, in eval mode too: every method ran them (or ran the
  modules before the first one it refused), so a refused call changed the model's recorded
  ranges, and Integrative CAM and ``ExplainerAttribution`` explained such a model while changing
  it. They are refused before anything runs, saying how to turn them off.
- Quantized modules (``quantize_dynamic``, ``convert``) compute on integers, fake quantizers
  (``prepare_qat``) round to them: Integrative CAM failed with ``AttributeError: 'NoneType'
  object has no attribute 'to'`` (dynamic) or ``'float' object has no attribute 'detach'``
  (int8), or blamed QAT's observer hooks ("remove the hook"); CTC named a torch operation it has
  no rule for. CTC, ``CTCAttributor`` and Integrative CAM refuse them, naming the module and
  saying to explain the float model; ``ExplainerAttribution``, which only reads the
  classifier's scores, explains such a classifier.
- A float model written for quantization (torchvision's quantizable ResNet: ``QuantStub``,
  ``FloatFunctional``) is no quantized model: every method explains it as the plain ResNet.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.ao.quantization as quantization
import torchvision
from torch import nn

from ctc_plugin import (
    TrainingModeError,
)

from .every_method import LIBRARY_METHODS, explain, model_state

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*quant:UserWarning"),
    pytest.mark.filterwarnings("ignore:the explainer has not been trained:UserWarning"),
]

CLASSES = 5
SIZE = 16
METHODS = LIBRARY_METHODS


class Net(nn.Module):
    """A small classifier written for eager-mode quantization."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.quant = quantization.QuantStub()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, CLASSES)
        self.dequant = quantization.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The class scores."""
        x = self.relu(self.norm(self.conv(self.quant(x))))
        x = self.pool(self.relu2(self.conv2(x)))
        return self.dequant(self.fc(torch.flatten(x, 1)))


def _images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _values(value: object) -> object:
    """A copy of a state entry: a tensor (quantized ones as floats), a tuple of them, a dtype."""
    if isinstance(value, torch.Tensor):
        return value.dequantize() if value.is_quantized else value.clone()
    if isinstance(value, tuple):
        return tuple(_values(item) for item in value)
    return value


def _assert_same_state(before: tuple, after: tuple) -> None:
    assert before[0] == after[0]
    assert before[1].keys() == after[1].keys()
    for key, value in before[1].items():
        if isinstance(value, torch.dtype):
            assert after[1][key] == value, key
        else:
            torch.testing.assert_close(after[1][key], value, rtol=0, atol=0, msg=key)


def _calibrated() -> nn.Module:
    """``prepare``d and calibrated: observers, no quantized module yet."""
    model = Net().eval()
    model.qconfig = quantization.get_default_qconfig("fbgemm")
    quantization.prepare(model, inplace=True)
    model(_images())
    return model


def _qat(observing: bool) -> nn.Module:
    """``prepare_qat``, one training step's ranges, then eval mode."""
    model = Net().train()
    model.qconfig = quantization.get_default_qat_qconfig("fbgemm")
    quantization.prepare_qat(model, inplace=True)
    model(_images())
    model.eval()
    if not observing:
        model.apply(quantization.disable_observer)
    return model


def _converted() -> nn.Module:
    return quantization.convert(_calibrated(), inplace=False).eval()


def _dynamic() -> nn.Module:
    return quantization.quantize_dynamic(Net().eval(), {nn.Linear}, dtype=torch.qint8)


@pytest.mark.parametrize("method", [*METHODS, "explainer"])
def test_observers_are_refused_before_they_record(method):
    model = _calibrated()
    before = model_state(model, _values)
    with pytest.raises(TrainingModeError, match=r"quantization observer.*convert the calibrated"):
        explain(method, model, _images(), CLASSES)
    _assert_same_state(before, model_state(model, _values))


@pytest.mark.parametrize("observing", [True, False], ids=["observers on", "observers off"])
@pytest.mark.parametrize("method", [*METHODS, "explainer"])
def test_fake_quantizers_are_refused_before_they_record(method, observing):
    """The explainer's classifier runs once the observers are off, as the message says."""
    model = _qat(observing)
    before = model_state(model, _values)
    if method == "explainer" and observing:
        with pytest.raises(TrainingModeError, match=r"quantization observer.*disable_observer"):
            explain(method, model, _images(), CLASSES)
    elif method == "explainer":
        assert explain(method, model, _images(), CLASSES).shape == (2, 3, SIZE, SIZE)
    else:
        with pytest.raises(
            ValueError, match=r"'quant.activation_post_process' is a fake quantizer .*float model"
        ):
            explain(method, model, _images(), CLASSES)
    _assert_same_state(before, model_state(model, _values))


@pytest.mark.parametrize("method", ["ctc-proportional", "integrative-cam"])
def test_observers_behind_a_plain_function_are_refused_as_they_run(method):
    model = _calibrated()
    before = model_state(model, _values)
    with pytest.raises(TrainingModeError, match=r"quantization observer"):
        explain(method, lambda x: model(x), _images(), CLASSES)
    _assert_same_state(before, model_state(model, _values))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("build", [_converted, _dynamic], ids=["convert", "quantize_dynamic"])
def test_quantized_models_are_refused_naming_the_module(method, build):
    model = build()
    before = model_state(model, _values)
    with pytest.raises(ValueError, match=r"'(quant|fc)' is a quantized .*explain the float model"):
        explain(method, model, _images(), CLASSES)
    _assert_same_state(before, model_state(model, _values))


@pytest.mark.parametrize("method", ["ctc-none", "integrative-cam"])
def test_quantized_modules_behind_a_plain_function_are_refused_as_they_run(method):
    model = _dynamic()
    with pytest.raises(ValueError, match=r"is a quantized Linear"):
        explain(method, lambda x: model(x), _images(), CLASSES)


def test_a_converted_model_left_in_training_mode_is_called_quantized():
    """``convert`` makes its quantized BatchNorm in training mode, where it updates nothing."""
    model = quantization.convert(_calibrated(), inplace=False)
    assert model.norm.training
    with pytest.raises(ValueError, match=r"is a quantized"):
        explain("ctc-none", model, _images(), CLASSES)


@pytest.mark.parametrize("build", [_converted, _dynamic], ids=["convert", "quantize_dynamic"])
def test_the_explainer_explains_a_quantized_classifier(build):
    model = build()
    expected = explain("explainer", copy.deepcopy(model), _images(), CLASSES)
    torch.testing.assert_close(explain("explainer", model, _images(), CLASSES), expected)


@pytest.mark.parametrize("method", METHODS)
def test_a_float_model_written_for_quantization_is_explained_as_the_plain_one(method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = torchvision.models.quantization.resnet18(quantize=False, num_classes=CLASSES)
    torch.manual_seed(0)
    written.eval()
    plain = torchvision.models.resnet18(num_classes=CLASSES).eval()
    plain.load_state_dict(written.state_dict())
    images = _images()
    torch.testing.assert_close(
        explain(method, written, images, CLASSES),
        explain(method, plain, images, CLASSES),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("method", METHODS)
def test_fused_fake_quantizers_with_everything_off_are_refused_naming_them(method):
    """``disable_observer`` and ``disable_fake_quant`` leave QAT's default fake quantizer
    (``FusedMovingAvgObsFakeQuantize``) running its fused operation, which returns a copy.

    CTC named ``torch.fused_moving_avg_obs_fake_quant`` as an operation without a rule;
    Integrative CAM said a forward hook on ``quant`` (QuantStub) replaced its output and to
    remove the hook, which is quantization's own.
    """
    model = _qat(observing=False)
    model.apply(quantization.disable_fake_quant)
    before = model_state(model, _values)
    with pytest.raises(
        ValueError,
        match=r"'quant.activation_post_process' is a fused fake quantizer .*float model",
    ):
        explain(method, model, _images(), CLASSES)
    _assert_same_state(before, model_state(model, _values))


@pytest.mark.parametrize("method", ["ctc-none", "integrative-cam"])
def test_fused_fake_quantizers_behind_a_plain_function_are_refused_as_they_run(method):
    model = _qat(observing=False)
    model.apply(quantization.disable_fake_quant)
    with pytest.raises(ValueError, match=r"is a fused fake quantizer"):
        explain(method, lambda x: model(x), _images(), CLASSES)


@pytest.mark.parametrize("method", METHODS)
def test_a_float_model_that_prepare_fx_swapped_is_explained_as_the_plain_one(method):
    """``prepare_fx`` swaps the ``FloatFunctional`` modules of the model it is given for
    ``FXFloatFunctional`` in place (the original model too): that float model was refused as
    'a quantized FXFloatFunctional ... computes on integers'."""
    from torch.ao.quantization import quantize_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = torchvision.models.quantization.resnet18(quantize=False, num_classes=CLASSES)
        written.eval()
        quantize_fx.prepare_fx(written, quantization.get_default_qconfig_mapping(), (_images(),))
    assert type(written.layer1[0].add_relu).__name__ == "FXFloatFunctional"
    plain = torchvision.models.resnet18(num_classes=CLASSES).eval()
    plain.load_state_dict(written.state_dict())
    images = _images()
    torch.testing.assert_close(
        explain(method, written, images, CLASSES),
        explain(method, plain, images, CLASSES),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("method", METHODS)
def test_a_model_quantized_by_convert_fx_is_called_quantized_not_exported(method):
    """``convert_fx``'s graph calls quantized operators (``torch.ops.quantized.add_relu``):
    it was refused as 'the module of an exported program (torch.export.export(...).module())'
    that 'keeps the input shapes it was exported with'."""
    from torch.ao.quantization import quantize_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = torchvision.models.quantization.resnet18(quantize=False, num_classes=CLASSES)
        mapping = quantization.get_default_qconfig_mapping()
        prepared = quantize_fx.prepare_fx(written.eval(), mapping, (_images(),))
        prepared(_images())
        model = quantize_fx.convert_fx(prepared)
    with pytest.raises(ValueError, match=r"is a quantized .*explain the float model"):
        explain(method, model, _images(), CLASSES)


@pytest.mark.parametrize(
    ("method", "name"),
    [("ctc-none", "CTC"), ("attributor", "CTCAttributor"), ("integrative-cam", "Integrative CAM")],
)
def test_the_refusal_of_a_quantized_model_names_the_method_called(method, name):
    with pytest.raises(ValueError, match=rf"^{name} follows the model's float operations"):
        explain(method, _dynamic(), _images(), CLASSES)
