"""CTCComposite and CTCAttributor: the Zennit entry point against CTC and plain torch."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
import zennit
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm
from zennit.composites import COMPOSITES, EpsilonPlusFlat, MixedComposite
from zennit.rules import Epsilon
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

from ctc_plugin.ctc.attribution import CTC
from ctc_plugin.ctc.attributor import CTCAttributor
from ctc_plugin.ctc.composite import (
    AffineRule,
    BatchNormRule,
    CTCComposite,
    CTCHook,
    LeakyReLURule,
    MaxPoolRule,
    ReLURule,
    RescaleRule,
    hooked_pass,
)
from ctc_plugin.ctc.errors import UnsupportedOperationError
from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.rules import GatedPass
from ctc_plugin.ctc.sharing import BIAS_SHARING_MODES, make_sharing
from ctc_plugin.testing import CNNSpec, RandomCNN
from tests.strategies import cases

MODES = list(BIAS_SHARING_MODES)
TOL = {"rtol": 1e-9, "atol": 1e-12}


def one_hot(target: int, classes: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.eye(classes, dtype=dtype)[[target]]


def module_net(seed: int = 0, inplace: bool = True) -> nn.Module:
    """A CNN made of modules only, so every rule runs in a hook (no functional calls)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=inplace),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1, bias=False),
        nn.BatchNorm2d(5),
        nn.LeakyReLU(0.2, inplace=inplace),
        nn.AdaptiveMaxPool2d(2),
        nn.Flatten(),
        nn.Linear(20, 6),
        nn.SiLU(),
        nn.Linear(6, 3),
    ).double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model.eval()


def grid_mask(size: int, cells: int) -> torch.Tensor:
    step = size // cells
    rows = (torch.arange(size) // step).clamp_max(cells - 1)
    return (rows.view(1, 1, -1, 1) * cells + rows.view(1, 1, 1, -1)) * 2 + 5


def ctc_and_attributor(model, x, mask, target, mode, **attributor_args):
    expected = CTC(model, bias_sharing=mode).attribute(x, target=target, feature_mask=mask)
    classes = model(x).shape[1]
    with CTCAttributor(model, CTCComposite(bias_sharing=mode), **attributor_args) as attributor:
        output, relevance = attributor(x, one_hot(target, classes), feature_mask=mask)
    return expected, output, relevance, attributor


# ---------------------------------------------------------------------------- agreement
@settings(max_examples=15, deadline=None)
@given(case=cases(), mode=st.sampled_from(MODES))
def test_attributor_equals_ctc_on_random_cnns(case, mode: str) -> None:
    model, x, mask, target = case
    expected, output, relevance, _ = ctc_and_attributor(model, x, mask, target, mode)
    torch.testing.assert_close(relevance, expected, **TOL)
    torch.testing.assert_close(output, model(x), **TOL)


@pytest.mark.parametrize("mode", MODES)
def test_user_forward_hooks_see_and_change_the_output_of_the_pass(mode: str) -> None:
    """A user's forward hooks on hooked modules (a temperature on the head, a scale on a
    BatchNorm, a logging hook on a ReLU) act on the pass as they act on the model: the
    attributor gives CTC's scores and the model's output, and the hooks see every copy."""
    model = RandomCNN(CNNSpec(batch_norm=True), seed=4).double()
    batch_norm = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    relu = next(m for m in model.modules() if isinstance(m, nn.ReLU))
    seen: list[tuple[int, ...]] = []
    handles = [
        model.head.register_forward_hook(lambda m, i, out: out / 0.5),
        batch_norm.register_forward_hook(lambda m, i, out: out * 0.5),
        relu.register_forward_hook(lambda m, i, out: seen.append(tuple(out.shape))),
    ]
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = grid_mask(8, 3)
    expected, output, relevance, _ = ctc_and_attributor(model, x, mask, 1, mode)
    torch.testing.assert_close(relevance, expected, **TOL)
    torch.testing.assert_close(output, model(x), **TOL)
    assert seen and all(shape[0] >= 2 for shape in seen)  # never the empty placeholder
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("inplace", [False, True])
def test_hooks_alone_carry_a_module_only_net(mode: str, inplace: bool) -> None:
    """functional='raise' refuses every rule outside hooks: the hooks must do all the work."""
    model = module_net(inplace=inplace)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = grid_mask(8, 3)
    expected, _, relevance, attributor = ctc_and_attributor(
        model, x, mask, 1, mode, functional="raise"
    )
    torch.testing.assert_close(relevance, expected, **TOL)


def test_functional_raise_names_the_operation() -> None:
    model = RandomCNN(CNNSpec(functional=True), seed=1).double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    attributor = CTCAttributor(model, functional="raise", feature_mask=grid_mask(8, 2))
    with pytest.raises(UnsupportedOperationError, match="relu.*outside every module"):
        attributor(x)


@pytest.mark.parametrize("mode", MODES)
def test_zoo_resnet_with_functional_relu_and_normalisation(mode: str) -> None:
    from ctc_plugin import zoo

    model = zoo.build("resnet", 6).double().eval()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    expected, _, relevance, _ = ctc_and_attributor(model, x, grid_mask(16, 2), 2, mode)
    torch.testing.assert_close(relevance, expected, **TOL)


def randomise_batch_norm(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.rand(size, generator=generator) * 0.4 - 0.2)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(size, generator=generator) * 0.4 - 0.2)
    return model.double().eval()


def ctc_on_canonized(model, canonizer, x, mask, target, mode):
    if canonizer is None:
        return CTC(model, bias_sharing=mode).attribute(x, target=target, feature_mask=mask)
    handles = canonizer.apply(model)
    try:
        return CTC(model, bias_sharing=mode).attribute(x, target=target, feature_mask=mask)
    finally:
        for handle in reversed(handles):
            handle.remove()


TORCHVISION = [
    pytest.param(
        "resnet18",
        lambda: torchvision.models.resnet18(num_classes=5),
        ResNetCanonizer,
    ),
    pytest.param(  # 138M parameters in float64: about 15 s
        "vgg16_bn",
        lambda: torchvision.models.vgg16_bn(num_classes=5),
        VGGCanonizer,
        marks=pytest.mark.slow,
    ),
    pytest.param(  # F.relu and torch.cat in forward: the guard applies the rules to them
        "densenet121",
        lambda: torchvision.models.densenet121(num_classes=5),
        None,
    ),
]


@pytest.mark.parametrize(("name", "build", "canonizer"), TORCHVISION)
def test_torchvision_with_canonizers(name, build, canonizer) -> None:
    torch.manual_seed(0)
    model = randomise_batch_norm(build())
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    mask = grid_mask(32, 2)
    before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for mode in MODES:
        canonizers = [] if canonizer is None else [canonizer()]
        expected = ctc_on_canonized(model, canonizer and canonizer(), x, mask, 3, mode)
        composite = CTCComposite(bias_sharing=mode, canonizers=canonizers)
        with CTCAttributor(model, composite, feature_mask=mask) as attributor:
            _, relevance = attributor(x, one_hot(3, 5))
            assert attributor.composite.handles  # registered for the whole block
        torch.testing.assert_close(relevance, expected, **TOL)
        if mode != "reference":  # canonizing changes the float rounding only
            plain = CTC(model, bias_sharing=mode).attribute(x, target=3, feature_mask=mask)
            torch.testing.assert_close(relevance, plain, rtol=1e-3, atol=1e-6)
    assert torch.equal(model(x), before)
    # zennit 1.0.0's canonizers leave a zero `bias` entry behind on bias-free convolutions
    # (their own bug, with or without CTC), so compare the entries the model had before
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())


# ---------------------------------------------------------------------------- zennit plumbing
def test_registry_name_ctc() -> None:
    assert COMPOSITES["ctc"] is CTCComposite
    model = module_net()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    composite = COMPOSITES["ctc"](bias_sharing="none")
    _, relevance = CTCAttributor(model, composite, feature_mask=grid_mask(8, 2))(x, one_hot(0, 3))
    expected = CTC(model, bias_sharing="none").attribute(x, 0, feature_mask=grid_mask(8, 2))
    torch.testing.assert_close(relevance, expected, **TOL)


@pytest.mark.parametrize("mode", MODES)
def test_mixed_composite(mode: str) -> None:
    model = module_net()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = grid_mask(8, 2)
    mixed = MixedComposite(
        [
            CTCComposite(bias_sharing=mode, canonizers=[SequentialMergeBatchNorm()]),
            EpsilonPlusFlat(),
        ]
    )
    with CTCAttributor(model, mixed, feature_mask=mask, functional="raise") as attributor:
        _, relevance = attributor(x, one_hot(2, 3))
    expected = ctc_on_canonized(model, SequentialMergeBatchNorm(), x, mask, 2, mode)
    torch.testing.assert_close(relevance, expected, **TOL)


def test_composite_without_ctc_is_refused() -> None:
    with pytest.raises(ValueError, match="exactly one CTCComposite"):
        CTCAttributor(module_net(), EpsilonPlusFlat())


def test_unknown_options_are_refused() -> None:
    with pytest.raises(ValueError, match="bias_sharing"):
        CTCComposite(bias_sharing="equal")
    with pytest.raises(ValueError, match="functional"):
        CTCAttributor(module_net(), functional="ignore")


@pytest.mark.parametrize(
    "rule",
    [AffineRule(), BatchNormRule(), ReLURule(), LeakyReLURule(), RescaleRule(), MaxPoolRule()],
)
def test_copy_keeps_class_and_shares_no_state(rule: CTCHook) -> None:
    duplicate = rule.copy()
    assert type(duplicate) is type(rule) and duplicate is not rule
    assert vars(duplicate).keys() == vars(rule).keys()  # every attribute the rule holds
    assert duplicate.stored_tensors is not rule.stored_tensors


def test_plain_forward_unchanged_inside_context() -> None:
    model = module_net()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    before = model(x)
    with CTCComposite(bias_sharing="proportional").context(model) as modified:
        assert torch.equal(modified(x), before)
    assert torch.equal(model(x), before)


def hook_counts(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def explode_in_ctc_pass(module: nn.Module, args: tuple) -> None:
    """A forward pre-hook that fails inside the CTC pass (after the CTC hook took the bias off)."""
    if args[0].shape[0] > 1:
        raise RuntimeError("boom")


@pytest.mark.parametrize("where", ["module", "unsupported"])
def test_hooks_and_parameters_restored_on_exception(where: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 3, padding=1)
    middle = nn.ReLU() if where == "module" else nn.Softmax2d()
    model = nn.Sequential(conv, middle, nn.Flatten(), nn.Linear(2 * 36, 3)).double().eval()
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    before, bias, hooks = model(x), conv.bias, hook_counts(model)
    composite = CTCComposite(bias_sharing="proportional", canonizers=[SequentialMergeBatchNorm()])
    expected = RuntimeError if where == "module" else UnsupportedOperationError
    handles = []
    with pytest.raises(expected):
        with CTCAttributor(model, composite, feature_mask=grid_mask(6, 2)) as attributor:
            if where == "module":  # registered after the CTC hook's pre-hook, so it runs later
                handles.append(conv.register_forward_pre_hook(explode_in_ctc_pass))
            attributor(x)
    for handle in handles:
        handle.remove()
    assert conv.bias is bias and "bias" not in conv.__dict__
    assert hook_counts(model) == hooks and not composite.handles
    assert torch.equal(model(x), before)


class FailingCanonizer(AttributeCanonizer):
    """A canonizer that fails after the composite registered part of itself."""

    def __init__(self) -> None:
        super().__init__(lambda name, module: None)

    def apply(self, root_module: nn.Module) -> list:
        raise RuntimeError("canonizer failed")


@pytest.mark.parametrize("use", ["call", "with"])
def test_a_registration_that_fails_halfway_leaves_no_hooks(use: str) -> None:
    model = module_net()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    before = model(x)
    tensors = dict([*model.named_parameters(), *model.named_buffers()])
    composite = MixedComposite(
        [
            CTCComposite(bias_sharing="proportional"),
            EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm(), FailingCanonizer()]),
        ]
    )
    attributor = CTCAttributor(model, composite, feature_mask=grid_mask(8, 2))
    with pytest.raises(RuntimeError, match="canonizer failed"):
        if use == "call":
            attributor(x, one_hot(0, 3))
        else:
            with attributor:
                pass
    assert hook_counts(model) == 0 and not composite.handles
    for name, value in [*model.named_parameters(), *model.named_buffers()]:
        assert value is tensors[name], name
    assert all("weight" not in m.__dict__ and "bias" not in m.__dict__ for m in model.modules())
    assert torch.equal(model(x), before)


def test_ctrl_c_at_any_hook_registration_leaves_no_hooks(monkeypatch) -> None:
    """A KeyboardInterrupt at the k-th hook registration, for every k the composite makes.

    Zennit's ``Hook.register`` makes two registrations before it returns their handles, and
    the CTC rules one more: an interrupt between them left hooks that no handle removed (the
    model then refused every later CTCAttributor call and broke plain backward passes).
    """
    names = ("register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook")
    originals = {name: getattr(nn.Module, name) for name in names}
    calls = {"count": 0, "interrupt_at": None}

    def counting(name):
        def register(module, *args, **kwargs):
            calls["count"] += 1
            if calls["count"] == calls["interrupt_at"]:
                raise KeyboardInterrupt(f"Ctrl-C in {name}")
            return originals[name](module, *args, **kwargs)

        return register

    for name in names:
        monkeypatch.setattr(nn.Module, name, counting(name))
    model = module_net()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    before = model(x)
    attributor = CTCAttributor(model, CTCComposite(bias_sharing="proportional"), grid_mask(8, 2))
    _, expected = attributor(x, one_hot(0, 3))
    registrations, calls["count"] = calls["count"], 0
    assert registrations > 6
    for at in range(1, registrations + 1):
        calls["count"], calls["interrupt_at"] = 0, at
        with pytest.raises(KeyboardInterrupt):
            attributor(x, one_hot(0, 3))
        assert hook_counts(model) == 0, f"hooks left after an interrupt at registration {at}"
    calls["interrupt_at"] = None
    assert torch.equal(model(x), before)
    _, relevance = attributor(x, one_hot(0, 3))  # and the model is explained again
    assert torch.equal(relevance, expected)


@pytest.mark.parametrize("mask", [grid_mask(8, 2), (grid_mask(8, 2),), [torch.ones(8, 8) > 0]])
def test_the_composite_holds_no_feature_mask(mask) -> None:
    with pytest.raises(TypeError, match=r"CTCAttributor\(model, composite, feature_mask=mask\)"):
        CTCComposite(mask)
    with pytest.raises(TypeError, match="feature_mask"):
        CTCComposite(feature_mask=grid_mask(8, 2))


def test_the_call_mask_overrides_the_attributors() -> None:
    model = module_net()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    attributor = CTCAttributor(
        model, CTCComposite(bias_sharing="none"), feature_mask=grid_mask(8, 2)
    )
    for mask in (grid_mask(8, 2), grid_mask(8, 4)):
        _, relevance = attributor(x, one_hot(1, 3), feature_mask=mask)
        expected = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
        torch.testing.assert_close(relevance, expected, **TOL)
        assert torch.equal(attributor.feature_scores.feature_mask[0], mask)
    _, default = attributor(x, one_hot(1, 3))
    expected = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=grid_mask(8, 2))
    torch.testing.assert_close(default, expected, **TOL)


class DoubledConv(nn.Conv2d):
    """A convolution subclass that does more than a convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x)) * 2.0


def test_custom_forward_gets_no_rule_and_is_seen_by_the_guard() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(DoubledConv(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 36, 3))
    model = model.double().eval()
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    mask = grid_mask(6, 2)
    expected = CTC(model, bias_sharing="proportional").attribute(x, 1, feature_mask=mask)
    composite = CTCComposite(bias_sharing="proportional")
    _, relevance = CTCAttributor(model, composite, feature_mask=mask)(x, one_hot(1, 3))
    torch.testing.assert_close(relevance, expected, **TOL)
    strict = CTCAttributor(model, composite, feature_mask=mask, functional="raise")
    with pytest.raises(UnsupportedOperationError, match="conv2d"):
        strict(x, one_hot(1, 3))


# ---------------------------------------------------------------------------- attr_output
def test_attr_output_forms_and_default() -> None:
    model = module_net()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = grid_mask(8, 2)
    predicted = model(x).argmax(dim=1).tolist()
    expected = CTC(model).attribute(x, None, feature_mask=mask)
    attributor = CTCAttributor(model, feature_mask=mask)
    _, default = attributor(x)
    weights = torch.zeros(2, 3, dtype=torch.float64)
    weights[range(2), predicted] = 1.0
    _, as_tensor = attributor(x, weights)
    _, as_function = attributor(x, lambda out: F.one_hot(out.argmax(1), 3).to(out.dtype))
    for relevance in (default, as_tensor, as_function):
        torch.testing.assert_close(relevance, expected, **TOL)
    assert attributor.feature_scores is not None
    assert attributor.feature_scores.scores.shape == (2, 4)


def test_weighted_attr_output_is_linear_without_bias_sharing() -> None:
    """With no bias sharing the pass is linear in the output weighting (independent check)."""
    model = module_net()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    mask = grid_mask(8, 2)
    attributor = CTCAttributor(model, CTCComposite(bias_sharing="none"), feature_mask=mask)
    _, mixed = attributor(x, torch.tensor([[0.5, -2.0, 0.0]], dtype=torch.float64))
    first = CTC(model, bias_sharing="none").attribute(x, 0, feature_mask=mask)
    second = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    torch.testing.assert_close(mixed, 0.5 * first - 2.0 * second, **TOL)


def test_attr_output_of_wrong_shape() -> None:
    attributor = CTCAttributor(module_net(), feature_mask=grid_mask(8, 2))
    with pytest.raises(ValueError, match="attr_output"):
        attributor(torch.rand(1, 3, 8, 8, dtype=torch.float64), torch.ones(1, 7))


# ---------------------------------------------------------------------------- rules in plain torch
def run_rule(module: nn.Module, copies: torch.Tensor, mode: str) -> torch.Tensor:
    """Propagate (N*C, ...) copies (gate copy first) through one module with its CTC hook."""
    layout = CopyLayout(
        examples=1, features=copies.shape[0] - 1, reference_full=False, baseline=False
    )
    gated = GatedPass(layout=layout, sharing=make_sharing(mode))
    with CTCComposite(bias_sharing=mode).context(module), torch.no_grad():
        with hooked_pass(gated, functional="raise") as state:
            out = module(gated.tag(copies.clone()))
    leaves = [m for m in module.modules() if not list(m.children())]
    assert state.hooked_calls == len(leaves)  # every layer ran through its hook
    return out


def proportional_bias(z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Plain torch: gate copy gets the bias, copies k >= 1 get |z_k| / sum_j |z_j| of it."""
    out = z.clone()
    out[0] += bias
    magnitude = z[1:].abs()
    total = magnitude.sum(dim=0, keepdim=True)
    share = torch.where(total > 0, magnitude / total.clamp_min(1e-300), 1.0 / (z.shape[0] - 1))
    out[1:] += share * bias
    return out


def random_copies(shape: tuple[int, ...], copies: int = 4) -> torch.Tensor:
    x = torch.randn(copies, *shape, dtype=torch.float64)
    x[0] = x[1:].sum(dim=0)  # the gate copy is the whole input
    return x


@pytest.mark.parametrize("mode", ["none", "proportional"])
@pytest.mark.parametrize("kind", ["conv", "linear", "conv_bn", "bn"])
def test_affine_rules_match_plain_torch(kind: str, mode: str) -> None:
    torch.manual_seed(1)
    if kind == "linear":
        module, x = nn.Linear(5, 3).double(), random_copies((5,))
    else:
        x = random_copies((2, 4, 4))
        layers = {
            "conv": [nn.Conv2d(2, 3, 3, padding=1)],
            "conv_bn": [nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)],
            "bn": [nn.BatchNorm2d(2)],
        }[kind]
        module = nn.Sequential(*layers).double().eval()
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.BatchNorm2d):
                sub.running_mean.uniform_(-1, 1)
                sub.running_var.uniform_(0.5, 2)
                sub.bias.uniform_(-1, 1)
        # plain torch: one affine map W' x + b' per layer stack, its bias shared once
        weight_only = module(torch.zeros_like(x[:1]))  # b' (BatchNorm folded into the conv)
        z = module(x) - weight_only
    expected = proportional_bias(z, weight_only[0]) if mode == "proportional" else z.clone()
    if mode == "none":
        expected[0] += weight_only[0]
    torch.testing.assert_close(run_rule(module, x, mode), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("module", "gate"),
    [
        (nn.ReLU(), lambda g: (g > 0).double()),
        (nn.ReLU(inplace=True), lambda g: (g > 0).double()),
        (nn.LeakyReLU(0.3), lambda g: torch.where(g > 0, 1.0, 0.3).double()),
        (nn.LeakyReLU(0.3, inplace=True), lambda g: torch.where(g > 0, 1.0, 0.3).double()),
        (nn.Tanh(), lambda g: torch.tanh(g) / g),
        (nn.SiLU(inplace=True), lambda g: torch.sigmoid(g)),
    ],
    ids=["relu", "relu_inplace", "leaky", "leaky_inplace", "tanh", "silu_inplace"],
)
def test_gate_rules_match_plain_torch(module: nn.Module, gate) -> None:
    x = random_copies((3, 5))
    g = gate(x[0])
    expected = x * g
    expected[0] = module.__class__(*([0.3] if isinstance(module, nn.LeakyReLU) else []))(x[0])
    torch.testing.assert_close(run_rule(module, x, "proportional"), expected)


@pytest.mark.parametrize(
    "module", [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1), nn.AdaptiveMaxPool2d(2)]
)
def test_max_pool_switches_match_plain_torch(module: nn.Module) -> None:
    x = random_copies((2, 6, 6))
    reference = module.__class__(**_pool_args(module), return_indices=True)
    _, indices = reference(x[:1])
    flat = x.flatten(2)
    expected = flat.gather(2, indices.flatten(2).expand(x.shape[0], -1, -1)).view(
        x.shape[0], *indices.shape[1:]
    )
    torch.testing.assert_close(run_rule(module, x, "none"), expected)


def _pool_args(module: nn.Module) -> dict:
    if isinstance(module, nn.AdaptiveMaxPool2d):
        return {"output_size": module.output_size}
    return {"kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding}


def test_zennit_version_is_the_expected_one() -> None:
    """CI runs this file with zennit 0.5.1 and again with 1.0.0 (``PYTHONPATH=.zennit1``).

    ``CTC_EXPECT_ZENNIT=1.0.0`` makes the run prove which zennit it imported.
    """
    installed = version_of_imported_zennit()
    assert installed.split(".")[0] in ("0", "1")
    expected = os.environ.get("CTC_EXPECT_ZENNIT")
    if expected:
        assert installed == expected, f"imported zennit {installed} from {zennit.__file__}"


def version_of_imported_zennit() -> str:
    """The version in the dist-info next to the zennit package that was imported."""
    package = Path(zennit.__file__).resolve().parent
    for distribution in importlib.metadata.distributions(path=[str(package.parent)]):
        if distribution.metadata["Name"].lower() == "zennit":
            return distribution.version
    raise AssertionError(f"no zennit dist-info next to {package}")


class _ReadsItsConvolutionAfterTheBatchNorm(nn.Module):
    """``y = conv(x)`` goes to a BatchNorm and, after it, to a ReLU module of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.relu, self.relu_again = nn.ReLU(), nn.ReLU()
        self.pool, self.flatten, self.head = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.relu(self.bn(y))
        return self.head(self.flatten(self.pool(z + self.relu_again(y))))


@pytest.mark.parametrize("mode", MODES)
def test_a_convolution_output_read_after_its_batch_norm_by_a_hooked_module(mode: str) -> None:
    """Hooks apply the rules directly, so the BatchNorm must not scale its input in place."""
    torch.manual_seed(0)
    model = _ReadsItsConvolutionAfterTheBatchNorm().eval().double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    expected, _, relevance, _ = ctc_and_attributor(model, x, grid_mask(8, 2), 1, mode)
    torch.testing.assert_close(relevance, expected, **TOL)


# ---------------------------------------------------------------------------- nested registration
def _registered_tensors(model: nn.Module) -> list:
    """Every module's registered tensors (identity and value) and the names its dict shadows."""
    return [
        (
            name,
            {
                key: (id(t), None if t is None else t.detach().clone())
                for key, t in (
                    *module._parameters.items(),
                    *module._buffers.items(),
                )
            },
            sorted(key for key in ("weight", "bias") if key in module.__dict__),
        )
        for name, module in model.named_modules()
    ]


def _assert_same_tensors(before: list, after: list) -> None:
    for (name, tensors, shadowed), (_, now, now_shadowed) in zip(before, after, strict=True):
        assert now.keys() == tensors.keys(), f"{name}: {sorted(now)} registered"
        for key, (identity, value) in tensors.items():
            assert now[key][0] == identity, f"{name}.{key} is another tensor"
            assert value is None or torch.equal(now[key][1], value), f"{name}.{key} changed"
        assert now_shadowed == shadowed, f"{name}: {now_shadowed} shadowed"


def _nested_with(model, composite, attributor, x):
    with attributor:
        with attributor:
            attributor(x, one_hot(1, 3))
        attributor(x, one_hot(1, 3))


def _with_inside_context(model, composite, attributor, x):
    with composite.context(model):
        with attributor:
            attributor(x, one_hot(1, 3))


def _two_attributors_one_composite(model, composite, attributor, x):
    other = CTCAttributor(model, composite, feature_mask=grid_mask(8, 2))
    with attributor:
        with other:
            other(x, one_hot(1, 3))
        attributor(x, one_hot(1, 3))


ZENNIT_1 = int(version_of_imported_zennit().split(".")[0]) >= 1
ZENNIT_1_LEAVES_A_BIAS = pytest.mark.skipif(
    ZENNIT_1,
    reason="zennit 1.0's own canonizer.remove() leaves the merged zero bias registered on a "
    "bias-free convolution, with or without CTC (composite.context(model) alone does it)",
)


@pytest.mark.parametrize(
    "nesting",
    [
        _nested_with,
        pytest.param(_with_inside_context, marks=ZENNIT_1_LEAVES_A_BIAS),
        pytest.param(_two_attributors_one_composite, marks=ZENNIT_1_LEAVES_A_BIAS),
    ],
)
def test_a_nested_registration_leaves_the_model_s_own_tensors(nesting) -> None:
    """Zennit's ``register`` removes the composite's earlier registration; the attributor's
    ``with`` records the model's tensors after that, not the canonized ones (issue: a nested
    ``with attributor`` left the merged BatchNorm in the convolutions for good)."""
    model = module_net()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    before, output, hooks = _registered_tensors(model), model(x), hook_counts(model)
    composite = CTCComposite(canonizers=[SequentialMergeBatchNorm()])
    attributor = CTCAttributor(model, composite, feature_mask=grid_mask(8, 2))
    nesting(model, composite, attributor, x)
    _assert_same_tensors(before, _registered_tensors(model))
    assert hook_counts(model) == hooks and not composite.handles
    assert torch.equal(model(x), output)


def test_a_second_composite_on_a_model_with_an_open_block_is_refused() -> None:
    """Zennit cannot take two composites' canonizers off one model (its ``ResNetCanonizer``
    deletes the ``forward`` it set, whoever set it last), and their hooks would stack: a second
    attributor with another composite is refused while the first block is open, and the first
    block still ends with the model as it was."""
    model = module_net()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    before, output, hooks = _registered_tensors(model), model(x), hook_counts(model)
    first = CTCAttributor(
        model, CTCComposite(canonizers=[SequentialMergeBatchNorm()]), feature_mask=grid_mask(8, 2)
    )
    second = CTCAttributor(
        model, CTCComposite(canonizers=[SequentialMergeBatchNorm()]), feature_mask=grid_mask(8, 2)
    )
    with first:
        registered = hook_counts(model)
        with pytest.raises(RuntimeError, match="another CTCAttributor's with block"):
            second.__enter__()
        assert hook_counts(model) == registered  # the refusal registered nothing
        first(x, one_hot(1, 3))
    _assert_same_tensors(before, _registered_tensors(model))
    assert hook_counts(model) == hooks and torch.equal(model(x), output)
    with second:  # once the first block has ended
        second(x, one_hot(1, 3))
    assert hook_counts(model) == hooks


@pytest.mark.parametrize("outer", ["ctc", "zennit", "canonizers only"])
def test_an_attributor_inside_another_composites_context_is_refused(outer) -> None:
    """``with other.context(model)`` then a CTCAttributor call with its own composite: the
    inner removal took the outer ResNetCanonizer's ``forward`` off, leaving 204 hooks and 17
    extra bias parameters on a ResNet-18 and its logits changed for good."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.rand(1, 3, 32, 32)
    before, output, hooks = _registered_tensors(model), model(x), hook_counts(model)
    other = {
        "ctc": lambda: CTCComposite(canonizers=[ResNetCanonizer()]),
        "zennit": lambda: EpsilonPlusFlat(canonizers=[ResNetCanonizer()]),
        # no rule hooks: the canonizer's forward set on the blocks is its only trace
        "canonizers only": lambda: zennit.core.Composite(
            module_map=lambda ctx, name, module: None, canonizers=[ResNetCanonizer()]
        ),
    }[outer]()
    attributor = CTCAttributor(
        model, CTCComposite(canonizers=[ResNetCanonizer()]), feature_mask=grid_mask(32, 4)
    )
    with other.context(model):
        with pytest.raises(RuntimeError, match="a Zennit composite is registered on this model"):
            attributor(x, torch.eye(5)[[2]])
    if outer == "ctc":  # a CTCComposite gives the model its own tensors back
        _assert_same_tensors(before, _registered_tensors(model))
    # (zennit 1.0's own canonizers leave new bias tensors of the same values behind)
    assert hook_counts(model) == hooks
    torch.testing.assert_close(model(x), output)
    attributor(x, torch.eye(5)[[2]])  # outside the block


@pytest.mark.parametrize("outer", ["context", "attributor"])
def test_a_second_composites_context_inside_an_open_block_is_refused(outer) -> None:
    """``with d.context(model)`` inside another CTCComposite's context (or an attributor's
    ``with``) stacked the hooks; with ``ResNetCanonizer`` its end deleted the outer ``forward``
    and left 204 hooks and changed ``state_dict`` keys on a ResNet-18 for good."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.rand(1, 3, 32, 32)
    before, output, hooks = _registered_tensors(model), model(x), hook_counts(model)
    first = CTCComposite(canonizers=[ResNetCanonizer()])
    second = CTCComposite(canonizers=[ResNetCanonizer()])
    block = (
        first.context(model)
        if outer == "context"
        else CTCAttributor(model, first, feature_mask=grid_mask(32, 4))
    )
    with block:
        registered = hook_counts(model)
        with pytest.raises(RuntimeError, match="a Zennit composite is registered on this model"):
            with second.context(model):
                pass
        assert hook_counts(model) == registered  # the refusal registered nothing
        with first.context(model):  # the same composite again: fine
            pass
    _assert_same_tensors(before, _registered_tensors(model))
    assert hook_counts(model) == hooks and torch.equal(model(x), output)
    with second.context(model):  # once the first block has ended
        pass
    assert hook_counts(model) == hooks


def test_a_canonizer_given_where_the_layer_map_goes_is_refused_at_construction() -> None:
    """``CTCComposite("proportional", [SequentialMergeBatchNorm()])`` was accepted and failed in
    Zennit's ``register`` with "cannot unpack non-iterable SequentialMergeBatchNorm object"."""
    with pytest.raises(TypeError, match="it is a canonizer; give canonizers by keyword"):
        CTCComposite("proportional", [SequentialMergeBatchNorm()])
    with pytest.raises(TypeError, match=r"layer_map takes \(module types, Zennit rule\) pairs"):
        CTCComposite(layer_map=[(nn.Conv2d, Epsilon(), "extra")])
    # a generator is read once, and a list pair is a pair (Zennit unpacks both)
    for layer_map in (
        (pair for pair in [((nn.Conv2d,), Epsilon())]),
        [[(nn.Conv2d,), Epsilon()]],
    ):
        composite = CTCComposite(layer_map=layer_map)
        assert isinstance(composite.layer_map[0][1], Epsilon)
        assert len(composite.layer_map) == len(CTCComposite().layer_map) + 1


def test_functional_raise_names_the_module_a_zennit_rule_of_the_layer_map_took() -> None:
    """The refusal said the convolution ran "outside every module with a CTC hook" and advised
    replacing the call by a module: it is a module's, which the user's layer_map gave Epsilon."""
    model = module_net()
    composite = CTCComposite(layer_map=[((nn.Conv2d,), Epsilon())])
    attributor = CTCAttributor(model, composite, feature_mask=grid_mask(8, 2), functional="raise")
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(UnsupportedOperationError) as raised:
        attributor(x, one_hot(1, 3))
    message = str(raised.value)
    assert "conv2d in 0 (Conv2d)" in message
    assert "the Zennit rule Epsilon" in message and "outside every module" not in message
    assert raised.value.module == "0 (Conv2d)"
