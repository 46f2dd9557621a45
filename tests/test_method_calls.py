"""How each method is called is written once (`ctc_plugin.method_calls`): the ``explain``
command's methods and the benchmark's are views of it.

The two registries configured Captum's FeatureAblation and Lime each in their own code (the
command passed no baseline, the benchmark ``baselines=0.0``; the command seeded Lime with its
own ``LIME_SEED``, the benchmark with ``SAMPLING_SEED``), and ``explain-dataset``'s plan kept
its own set of the methods that read ``--perturbations-per-eval``.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import FeatureAblation, Lime

from ctc_plugin import method_calls, zoo
from ctc_plugin.commands.methods import Request, run_method
from ctc_plugin.harness.methods import registry

#: The arguments each view passes itself (the image, the class, the features and the view's
#: own options); every other argument of the call is a setting of the method.
VIEW_ARGUMENTS = {"target", "feature_mask", "perturbations_per_eval", "n_samples", "show_progress"}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = zoo.build("resnet", 3).eval()
    ids = torch.arange(2).repeat_interleave(8)
    mask = (ids[:, None] * 2 + ids[None, :])[None, None]  # 4 segments of 8x8
    return model, torch.rand(1, 3, 16, 16), mask


def recorded_calls(monkeypatch, setup):
    """The settings of each Captum call both views make: ``{(view, method): settings}``."""
    calls: dict[tuple[str, str], dict] = {}
    view = {"name": ""}
    for cls in (FeatureAblation, Lime):
        original = cls.attribute

        def record(self, inputs, *args, _cls=cls, _original=original, **kwargs):
            settings = {k: v for k, v in kwargs.items() if k not in VIEW_ARGUMENTS}
            settings["seed"] = torch.initial_seed()
            calls[(view["name"], _cls.__name__)] = settings
            return _original(self, inputs, *args, **kwargs)

        monkeypatch.setattr(cls, "attribute", record)
    model, pixels, mask = setup
    view["name"] = "command"
    request = Request(model, pixels, 1, mask, lime_samples=8, show_progress=False)
    run_method("feature-ablation", request)
    run_method("lime", request)
    view["name"] = "benchmark"
    specs = registry(n_samples=8)
    for name in ("FeatureAblation", "Lime"):
        specs[name].fn(model, pixels, torch.tensor([1]), mask)
    return calls


def test_both_registries_call_feature_ablation_and_lime_with_the_same_settings(monkeypatch, setup):
    calls = recorded_calls(monkeypatch, setup)
    for method in ("FeatureAblation", "Lime"):
        assert calls[("command", method)] == calls[("benchmark", method)], method
        assert calls[("command", method)]["baselines"] == 0.0  # black, as both pages say


def test_the_settings_come_from_one_object(monkeypatch, setup):
    """Changing the one home changes both registries' calls."""
    monkeypatch.setattr(
        method_calls, "FEATURE_ABLATION", method_calls.FEATURE_ABLATION.but(baselines=0.25)
    )
    monkeypatch.setattr(method_calls, "LIME", method_calls.LIME.but(sampling_seed=7))
    calls = recorded_calls(monkeypatch, setup)
    for view in ("command", "benchmark"):
        assert calls[(view, "FeatureAblation")]["baselines"] == 0.25, view
        assert calls[(view, "Lime")]["seed"] == 7, view


def test_the_run_plan_asks_the_methods_which_read_perturbations_per_eval(monkeypatch):
    """``explain-dataset``'s plan kept its own set of the methods that read the option."""
    from ctc_plugin.commands import methods
    from ctc_plugin.runs.plan import RunConfig

    for sharing in ("reference", "proportional", "none"):
        for names in (("ctc",), ("lime",), ("feature-ablation",), ("gradcam", "explainer")):
            unread = RunConfig(methods=names, bias_sharing=sharing).unread_options()
            reads = any(methods.reads_perturbations_per_eval(n, sharing) for n in names)
            assert ("perturbations_per_eval" in unread) is not reads, (sharing, names)
    monkeypatch.setattr(methods, "reads_perturbations_per_eval", lambda name, sharing: False)
    assert "perturbations_per_eval" in RunConfig(methods=("lime",)).unread_options()


def test_the_benchmarks_ctc_variants_are_the_bias_sharing_modes(monkeypatch):
    """The benchmark listed CTC's modes itself; it now takes ``ctc.modes``' list."""
    from ctc_plugin.ctc.modes import BIAS_SHARING_MODES
    from ctc_plugin.harness import methods

    ctc = [name for name in registry() if name.startswith("CTC-")]
    assert ctc == [f"CTC-{mode}" for mode in BIAS_SHARING_MODES]
    monkeypatch.setattr(methods, "BIAS_SHARING_MODES", ("none",))
    assert [name for name in registry() if name.startswith("CTC-")] == ["CTC-none"]
