"""Every method on a model that went through a tracer: TorchScript, FX, ``torch.export``.

- ``torch.fx.symbolic_trace`` and ``torch.func.functional_call`` keep torch's Python functions:
  every method explains such a model as the model itself.
- The module of an exported program (``torch.export.export(model, args).module()``) calls ATen
  operators (``torch.ops.aten.conv2d.default``): CTC refused its first operator by name, or,
  exported with a fixed batch size, failed with torch's bare ``AssertionError: Guard failed:
  x.size()[0] == 2`` on its batch of copies; Integrative CAM said no convolution ran. Both, and
  ``CTCAttributor``, refuse it before it runs, saying to pass the original module.
- ``CTCAttributor`` given a TorchScript module failed inside Zennit (``TypeError: contains():
  incompatible function arguments``); it is refused as Integrative CAM refuses it. (CTC runs it
  and refuses its untraced output: ``tests/robustness/test_forward_provenance.py``.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from ctc_plugin import (
    CTCAttributor,
    CTCComposite,
    Explainer,
    ExplainerAttribution,
)
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition

from .every_method import LIBRARY_METHODS, explain

CLASSES = 4
SIZE = 16
METHODS = LIBRARY_METHODS


def _model() -> RandomCNN:
    return RandomCNN(CNNSpec(classes=CLASSES, residual=True), seed=0)


def _images() -> torch.Tensor:
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


class Functional(nn.Module):
    """Runs a copy of the model's architecture with its own weights, by ``functional_call``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's scores with the weights held here."""
        return functional_call(self.inner, self.weights, (x,))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "trace",
    [torch.fx.symbolic_trace, Functional],
    ids=["fx.symbolic_trace", "functional_call"],
)
def test_models_that_keep_torch_functions_are_explained_as_the_model(method, trace):
    model, images = _model(), _images()
    expected = explain(method, model, images, CLASSES)
    torch.testing.assert_close(explain(method, trace(_model()), images, CLASSES), expected)


def _exported(dynamic: bool) -> nn.Module:
    images = _images()
    shapes = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic else None
    return torch.export.export(_model(), (images,), dynamic_shapes=shapes).module()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dynamic", [False, True], ids=["fixed batch", "dynamic batch"])
def test_an_exported_programs_module_is_refused_before_it_runs(method, dynamic):
    model = _exported(dynamic)
    with pytest.raises(TypeError, match=r"exported program .*aten\..*pass the original nn.Module"):
        explain(method, model, _images(), CLASSES)


def test_an_exported_module_behind_a_bound_method_is_refused_too():
    model = _exported(dynamic=True)
    with pytest.raises(TypeError, match=r"exported program"):
        explain("ctc-proportional", model.forward, _images(), CLASSES)


@pytest.mark.filterwarnings("ignore:the explainer has not been trained:UserWarning")
@pytest.mark.parametrize("target", [[0, 1], None], ids=["target", "predicted class"])
def test_the_explainer_runs_an_exported_classifier_and_names_a_fixed_batch(target):
    """It only reads the classifier's scores; it failed with torch's bare 'Guard failed'."""
    torch.manual_seed(0)
    explainer = Explainer(build_backbone("unet-small", CLASSES), CLASSES).eval()
    images = _images()
    expected = ExplainerAttribution(_model(), explainer, check_classifier=False).attribute(
        images, target
    )
    dynamic = ExplainerAttribution(_exported(dynamic=True), explainer, check_classifier=False)
    torch.testing.assert_close(dynamic.attribute(images, target), expected)
    fixed = ExplainerAttribution(_exported(dynamic=False), explainer, check_classifier=False)
    with pytest.raises(ValueError, match=r"exported program.*dynamic batch dimension"):
        fixed.attribute(images[:1] if target is None else images, target)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("script", ["script", "trace"])
def test_the_zennit_route_refuses_torchscript_as_integrative_cam_does(script):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, CLASSES)
    ).eval()  # fmt: skip
    scripted = torch.jit.script(model) if script == "script" else torch.jit.trace(model, _images())
    with pytest.raises(TypeError, match=r"CTCAttributor is a TorchScript .*nn.Module"):
        CTCAttributor(scripted, CTCComposite(), feature_mask=random_partition(SIZE, SIZE, 6))
