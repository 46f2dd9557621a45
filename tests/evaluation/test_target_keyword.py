"""The class a metric explains is ``target=``, as in Captum; ``targets=`` still works and warns.

The evaluation (and the benchmark's methods, which it calls) named it ``targets=`` where
Captum's ``attribute`` methods and metrics (``infidelity``, ``sensitivity_max``), CTC and
Integrative CAM say ``target=``: a Captum user's ``max_sensitivity(method, model, x, target=y)``
was a ``TypeError``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import ctc_plugin.evaluation
from ctc_plugin.evaluation.arguments import as_targets, explain, model_targets
from ctc_plugin.evaluation.faithfulness import perturbation_curve
from ctc_plugin.evaluation.invariance import input_invariance
from ctc_plugin.evaluation.protocol import run_protocol
from ctc_plugin.evaluation.sanity import cascading_randomisation
from ctc_plugin.evaluation.sensitivity import max_sensitivity, measure_cost
from ctc_plugin.harness.methods import registry

CLASSES = torch.tensor([0, 2])


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def _images() -> torch.Tensor:
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def saliency(model, images, target, feature_mask):
    x = images.detach().clone().requires_grad_(True)
    model(x).gather(1, target[:, None].to(x.device)).sum().backward()
    return x.grad.abs().sum(1, keepdim=True)


#: Every function of the evaluation that takes the class explained, called with ``**keyword``
#: (``{"target": ...}`` or ``{"targets": ...}``) and reduced to what must not depend on the name.
CALLS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "perturbation_curve": (
        perturbation_curve,
        lambda m, x, **kw: perturbation_curve(m, x, attributions=x[:, :1], steps=4, **kw).scores,
    ),
    "input_invariance": (
        input_invariance,
        lambda m, x, **kw: input_invariance(saliency, m, x, **kw),
    ),
    "run_protocol": (
        run_protocol,
        lambda m, x, **kw: run_protocol(saliency, m, x, perturbations=[("blur", "small")], **kw),
    ),
    "cascading_randomisation": (
        cascading_randomisation,
        lambda m, x, **kw: cascading_randomisation(saliency, m, x, max_steps=1, **kw),
    ),
    "max_sensitivity": (
        max_sensitivity,
        lambda m, x, **kw: max_sensitivity(saliency, m, x, n_samples=2, **kw),
    ),
    "measure_cost": (measure_cost, lambda m, x, **kw: measure_cost(saliency, m, x, **kw)[0]),
    "as_targets": (as_targets, lambda m, x, **kw: as_targets(n=len(x), **kw)),
    "model_targets": (model_targets, lambda m, x, **kw: model_targets(m, x, **kw)),
    "explain": (explain, lambda m, x, **kw: explain(saliency, m, x, feature_mask=None, **kw)),
}

#: The benchmark's methods, each with a 2 x 2 grid of features (AttnLRP is for ViTs only).
METHODS = {
    name: spec.fn
    for name, spec in registry(n_samples=8, ig_steps=4).items()
    if spec.applies_to is None or spec.applies_to(_model())
}
GRID = (torch.arange(64).view(8, 8) // 4 % 2 + torch.arange(64).view(8, 8) // 32 * 2).expand(
    2, 1, 8, 8
)
for _name, _fn in METHODS.items():
    CALLS[f"registry {_name}"] = (
        _fn,
        lambda m, x, _fn=_fn, **kw: _fn(m, x, feature_mask=GRID, **kw),
    )


def _plain(value: Any) -> Any:
    """``value`` with dataclasses as dicts, for an exact comparison of two results."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _assert_same(first: Any, second: Any) -> None:
    first, second = _plain(first), _plain(second)
    if isinstance(first, dict):
        assert first.keys() == second.keys()
        for key in first:
            _assert_same(first[key], second[key])
    elif isinstance(first, list):
        assert len(first) == len(second)
        for a, b in zip(first, second, strict=True):
            _assert_same(a, b)
    elif isinstance(first, torch.Tensor):
        torch.testing.assert_close(first, second, rtol=0, atol=0, equal_nan=True)
    else:
        assert first == second


@pytest.mark.parametrize("name", list(CALLS))
def test_target_is_the_name_and_targets_still_works_with_a_future_warning(name):
    function, call = CALLS[name]
    assert "target" in inspect.signature(function).parameters  # what help() shows
    assert "targets" not in inspect.signature(function).parameters
    model, images = _model(), _images()
    new = call(model, images, target=CLASSES)
    with pytest.warns(FutureWarning, match=r"targets=.*deprecated.*use target=") as caught:
        old = call(model, images, targets=CLASSES)
    _assert_same(new, old)
    # the warning points at the caller's line (past the decorator), here this file
    assert [w.filename for w in caught if w.category is FutureWarning] == [__file__]


@pytest.mark.parametrize("name", list(CALLS))
def test_giving_both_target_and_targets_is_a_type_error_naming_both(name):
    _, call = CALLS[name]
    with pytest.raises(TypeError, match=r"both target .*and targets="):
        call(_model(), _images(), target=CLASSES, targets=CLASSES)


def test_the_class_by_position_runs_as_before_and_with_targets_too_is_a_type_error():
    model, images = _model(), _images()
    by_position = max_sensitivity(saliency, model, images, CLASSES, None, n_samples=2)
    _assert_same(by_position, max_sensitivity(saliency, model, images, target=CLASSES, n_samples=2))
    with pytest.raises(TypeError, match=r"both target \(by position\) and targets="):
        max_sensitivity(saliency, model, images, CLASSES, targets=CLASSES)


def test_no_function_of_the_evaluation_takes_targets_any_more():
    """Every public function of ``ctc_plugin.evaluation`` says ``target``, and the list above
    covers each that takes it."""
    taking_targets, taking_target = [], set()
    for info in pkgutil.iter_modules(ctc_plugin.evaluation.__path__, "ctc_plugin.evaluation."):
        module = importlib.import_module(info.name)
        for attribute, value in vars(module).items():
            if attribute.startswith("_") or not inspect.isfunction(value):
                continue
            if value.__module__ != info.name:
                continue
            parameters = inspect.signature(value).parameters
            if "targets" in parameters:
                taking_targets.append(f"{info.name}.{attribute}")
            if "target" in parameters:
                taking_target.add(attribute)
    assert not taking_targets
    assert taking_target == {name for name in CALLS if not name.startswith("registry ")}


def test_every_method_of_the_benchmark_takes_target():
    every = registry(n_samples=8, ig_steps=4)  # AttnLRP too, where lxt is installed
    assert [
        name
        for name, spec in every.items()
        if "target" not in inspect.signature(spec.fn).parameters
    ] == []


def test_the_benchmarks_method_that_reuses_its_maps_takes_target_as_the_methods_it_wraps():
    """The robustness metrics call the method through ``harness.scoring._reusing``, which
    still named the class ``targets``: a call with ``target=`` was a ``TypeError``."""
    from ctc_plugin.harness.scoring import _reusing

    model, images = _model(), _images()
    maps = saliency(model, images, CLASSES, None)
    method = _reusing(saliency, model, images, CLASSES, None, maps)
    assert "target" in inspect.signature(method).parameters
    assert method(model, images, target=CLASSES, feature_mask=None) is not maps  # reused, a copy
    torch.testing.assert_close(method(model, images, target=CLASSES, feature_mask=None), maps)
    other = images.flip(-1)
    torch.testing.assert_close(
        method(model, other, target=CLASSES, feature_mask=None),
        saliency(model, other, CLASSES, None),
    )
