"""A user's function takes a rule of the table with ``register_rule``, without editing the package.

``torch.atan`` has no row: a model using it is refused. Registered like ``torch.tanh`` (a
squashing activation), it is a rescale gate: ``"proportional"`` scores add up to the logit and
``"none"`` scores are the gradient x input of the network with ``atan(h) / h`` held at the
full input's value. Wrong registrations are refused with what to do, and a removed rule is gone.
"""

from __future__ import annotations

import functools
import math

import numpy
import pytest
import torch
from torch import nn

from ctc_plugin import CTC, CTCAttributor, CTCComposite, UnsupportedOperationError
from ctc_plugin.ctc.operations import register_rule, rule_for
from ctc_plugin.testing import random_partition


class _Net(nn.Module):
    """A convolution, an activation (swappable: ``net.activation = ...``), optionally ``+ h``."""

    def __init__(self, activation, residual: bool = False) -> None:
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2)
        self.activation, self.residual = activation, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        out = self.activation(h) + h if self.residual else self.activation(h)
        return self.head(out.mean(dim=(2, 3)))


def _frozen_atan(h: torch.Tensor) -> torch.Tensor:
    """atan with its gate ``atan(h) / h`` held at the full input's value (the linearisation)."""
    return h * (torch.atan(h) / h).detach()


@pytest.fixture
def setting():
    torch.manual_seed(0)
    model = _Net(torch.atan).double().eval()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64) + 0.1
    return model, x, random_partition(6, 6, 4)


def test_unregistered_the_function_is_refused_saying_how_to_register(setting):
    model, x, mask = setting
    with pytest.raises(UnsupportedOperationError, match=r"register_rule\(function, like=\.\.\.\)"):
        CTC(model).attribute(x, 1, feature_mask=mask)


def test_registered_like_tanh_it_is_a_rescale_gate(setting):
    model, x, mask = setting
    with register_rule(torch.atan, like=torch.tanh):
        _, scores = CTC(model).attribute(x, 1, feature_mask=mask, return_feature_scores=True)
        torch.testing.assert_close(scores.scores.sum(1), model(x)[:, 1].detach())
        none = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
        attributor = CTCAttributor(model, CTCComposite(), feature_mask=mask)
        _, relevance = attributor(x, torch.eye(2, dtype=x.dtype)[[1, 1]])
        torch.testing.assert_close(relevance, CTC(model).attribute(x, 1, feature_mask=mask))
    leaf = x.clone().requires_grad_(True)
    model.activation = _frozen_atan
    (gradient,) = torch.autograd.grad(model(leaf)[:, 1].sum(), leaf)
    model.activation = torch.atan
    contribution = (gradient * x).sum(1, keepdim=True)  # (2, 1, 6, 6)
    expected = torch.zeros_like(contribution)
    for feature in mask.unique():
        inside = mask == feature
        expected += inside * (contribution * inside).sum(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(none, expected.expand_as(x), rtol=0, atol=1e-12)
    assert rule_for(torch.atan) is None  # the block removed it
    with pytest.raises(UnsupportedOperationError):
        CTC(model).attribute(x, 1, feature_mask=mask)


def test_wrong_registrations_are_refused():
    with pytest.raises(ValueError, match="torch.atan has no CTC rule to share"):
        register_rule(torch.erfinv, like=torch.atan)
    with pytest.raises(ValueError, match="has a CTC rule already \\(in the table"):
        register_rule(torch.tanh, like=torch.sigmoid)
    with pytest.raises(TypeError, match="function must be callable"):
        register_rule("atan", like=torch.tanh)
    with pytest.raises(ValueError, match="conv2d has a rule of its own that reads its argument"):
        register_rule(torch.atan, like=nn.functional.conv2d)  # its handler reads names
    with pytest.raises(TypeError, match="is a Python function: the pass sees the torch"):
        register_rule(lambda x: torch.atan(x), like=torch.tanh)
    handle = register_rule(torch.atan, like=torch.tanh)
    try:
        with pytest.raises(ValueError, match="\\(registered: "):
            register_rule(torch.atan, like=torch.sigmoid)
    finally:
        handle.remove()
    handle.remove()  # a second remove does nothing
    assert rule_for(torch.atan) is None
    again = register_rule(torch.atan, like=torch.tanh)  # another owner, after the first
    handle.remove()  # the first handle's remove leaves the second registration alone
    assert rule_for(torch.atan) is not None
    again.remove()
    assert rule_for(torch.atan) is None


def test_a_torch_ops_operator_is_named_as_written_and_takes_a_rule(setting):
    _, x, mask = setting
    torch.manual_seed(0)
    model = _Net(torch.ops.aten.gelu).double().eval()
    with pytest.raises(UnsupportedOperationError, match=r"through torch\.ops\.aten\.gelu in"):
        CTC(model).attribute(x, 1, feature_mask=mask)
    with register_rule(torch.ops.aten.gelu, like=nn.functional.gelu):
        got = CTC(model).attribute(x, 1, feature_mask=mask)
    model.activation = nn.functional.gelu
    expected = CTC(model).attribute(x, 1, feature_mask=mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@torch.library.custom_op("ctc_plugin_tests::flagged_atan", mutates_args=())
def _flagged_atan(x: torch.Tensor, smooth: bool) -> torch.Tensor:
    """atan(x) whatever the flag: a positional True that means no in-place write."""
    return torch.atan(x)


@_flagged_atan.register_fake
def _(x: torch.Tensor, smooth: bool) -> torch.Tensor:
    return torch.empty_like(x)


def test_a_registered_operator_with_a_true_flag_is_not_taken_as_in_place(setting):
    """``act(h, True) + h``: the residual must read h, not the activation written into it."""
    _, x, mask = setting
    torch.manual_seed(0)
    model = _Net(lambda h: torch.ops.ctc_plugin_tests.flagged_atan(h, True), residual=True)
    model = model.double().eval()
    with register_rule(torch.ops.ctc_plugin_tests.flagged_atan, like=torch.tanh):
        _, got = CTC(model).attribute(x, 1, feature_mask=mask, return_feature_scores=True)
        output = model(x)[:, 1].detach()
    model.activation = torch.atan
    with register_rule(torch.atan, like=torch.tanh):
        _, expected = CTC(model).attribute(x, 1, feature_mask=mask, return_feature_scores=True)
    torch.testing.assert_close(got.scores, expected.scores, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.output, output, rtol=0, atol=1e-12)


@torch.library.custom_op("ctc_plugin_tests::swish", mutates_args=())
def _swish(x: torch.Tensor) -> torch.Tensor:
    """silu written as a custom operator."""
    return x * torch.sigmoid(x)


@_swish.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@pytest.mark.parametrize(
    "registered",
    [_swish, torch.ops.ctc_plugin_tests.swish, torch.ops.ctc_plugin_tests.swish.default],
    ids=["custom-op-function", "torch.ops-packet", "torch.ops-overload"],
)
@pytest.mark.parametrize(
    "call",
    [_swish, torch.ops.ctc_plugin_tests.swish, torch.ops.ctc_plugin_tests.swish.default],
    ids=["model-calls-function", "model-calls-packet", "model-calls-overload"],
)
def test_a_custom_operator_takes_its_rule_however_it_is_registered_and_called(
    setting, registered, call
):
    """Registering the custom operator's function was accepted and never matched."""
    _, x, mask = setting
    torch.manual_seed(0)
    model = _Net(call).double().eval()
    with register_rule(registered, like=nn.functional.silu):
        got = CTC(model).attribute(x, 1, feature_mask=mask)
    assert rule_for(torch.ops.ctc_plugin_tests.swish) is None  # every form removed again
    assert rule_for(torch.ops.ctc_plugin_tests.swish.default) is None
    model.activation = nn.functional.silu
    torch.testing.assert_close(
        got, CTC(model).attribute(x, 1, feature_mask=mask), atol=1e-12, rtol=0
    )


def _atan_in_place(h: torch.Tensor) -> torch.Tensor:
    h.atan_()  # what it returns is not read: h itself must hold the result
    return h


@pytest.mark.parametrize("registered", [torch.atan, torch.Tensor.atan, torch.Tensor.atan_])
@pytest.mark.parametrize("form", [torch.Tensor.atan, _atan_in_place], ids=["x.atan()", "x.atan_()"])
@pytest.mark.parametrize("mode", ["none", "proportional"])
def test_every_form_of_a_torch_function_is_covered_and_in_place_ones_write(
    setting, registered, form, mode
):
    """``torch.atan`` did not cover ``x.atan()``, and ``x.atan_()`` registered without
    ``inplace=True`` gave "none" scores 6 % off, still adding up in "proportional" sharing."""
    model, x, mask = setting
    with register_rule(torch.atan, like=torch.tanh):
        expected = CTC(model, bias_sharing=mode).attribute(x, 1, feature_mask=mask)
    model.activation = form
    with register_rule(registered, like=torch.tanh):
        got = CTC(model, bias_sharing=mode).attribute(x, 1, feature_mask=mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert all(rule_for(f) is None for f in (torch.atan, torch.Tensor.atan, torch.Tensor.atan_))


def test_an_in_place_function_said_not_in_place_is_refused():
    with pytest.raises(ValueError, match=r"torch.Tensor.atan_ writes its result into its input"):
        register_rule(torch.Tensor.atan_, like=torch.tanh, inplace=False)
    assert rule_for(torch.Tensor.atan_) is None


@torch.library.custom_op("ctc_plugin_tests::atan_in_place", mutates_args=("x",))
def _atan_in_place_op(x: torch.Tensor) -> None:
    """atan written into its input, returning nothing, as a mutating custom operator does."""
    x.atan_()


def _calls_the_mutating_operator(h: torch.Tensor) -> torch.Tensor:
    _atan_in_place_op(h)
    return h


def _calls_the_mutating_packet(h: torch.Tensor) -> torch.Tensor:
    torch.ops.ctc_plugin_tests.atan_in_place(h)
    return h


@pytest.mark.parametrize("mode", ["none", "proportional"])
@pytest.mark.parametrize(
    ("registered", "call"),
    [
        (_atan_in_place_op, _calls_the_mutating_operator),
        (torch.ops.ctc_plugin_tests.atan_in_place, _calls_the_mutating_operator),
        (torch.ops.ctc_plugin_tests.atan_in_place.default, _calls_the_mutating_packet),
    ],
    ids=["function-registered", "packet-registered", "overload-registered-packet-called"],
)
def test_a_custom_operator_that_writes_its_input_and_returns_nothing(
    setting, mode, registered, call
):
    """The rule divided its None result by the input (a TypeError from inside the pass), and
    inplace=True reached only the form registered: the form called was not in place ("none"
    scores 5 % off, "proportional" still adding up)."""
    model, x, mask = setting
    with register_rule(torch.atan, like=torch.tanh):
        expected = CTC(model, bias_sharing=mode).attribute(x, 1, feature_mask=mask)
    model.activation = call
    with register_rule(registered, like=torch.tanh, inplace=True):
        got = CTC(model, bias_sharing=mode).attribute(x, 1, feature_mask=mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_an_aten_in_place_operator_is_in_place_by_its_name():
    from ctc_plugin.ctc.operations import seen_forms

    assert set(seen_forms(torch.ops.aten.atan_).values()) == {True}
    assert set(seen_forms(torch.ops.aten.atan).values()) == {False}
    with pytest.raises(ValueError, match="writes its result into its input"):
        register_rule(torch.ops.aten.atan_.default, like=torch.tanh, inplace=False)


class _AtanModule(nn.Module):
    """atan as a module: the pass sees ``torch.atan`` called in its forward, never the module."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return torch.atan(t)


_UNSEEN = {
    "module": (_AtanModule(), r"_AtanModule is a module: the pass sees the torch functions its"),
    "module-class": (_AtanModule, r"_AtanModule is a module class: the pass sees the torch"),
    "bound-forward": (_AtanModule().forward, r"_AtanModule.forward is a method of a module"),
    "partial": (functools.partial(torch.atan), r"partial of torch.atan: .*; register torch.atan"),
    "math": (math.atan, r"math.atan computes outside torch.*register that \(torch.atan\)"),
    "numpy": (numpy.arctan, r"numpy.arctan computes outside torch.*that \(torch.arctan\)"),
    "tensor-method": (torch.zeros(1).atan, r"method of one tensor: register torch.Tensor.atan"),
    "torch-python-function": (
        torch.nn.init.calculate_gain,
        r"torch.nn.init.calculate_gain is no function a CTC pass",
    ),
}


@pytest.mark.parametrize(("unseen", "advice"), list(_UNSEEN.values()), ids=list(_UNSEEN))
def test_callables_the_pass_never_sees_are_refused_with_what_to_register(unseen, advice):
    """They were accepted, and a model calling them still failed at attribute."""
    with pytest.raises(TypeError, match=advice):
        register_rule(unseen, like=torch.tanh)
    assert rule_for(unseen) is None


def test_like_takes_the_function_not_its_name():
    with pytest.raises(TypeError, match=r"like= takes the function \(torch.tanh\), not its name"):
        register_rule(torch.atan, like="tanh")
    with pytest.raises(TypeError, match=r"like= takes the function \(torch.nn.functional.silu\)"):
        register_rule(torch.atan, like="silu")
    assert rule_for(torch.atan) is None


class _TwoSignals(nn.Module):
    """``torch.atan2`` of two convolutions of the input (or of one and ``second``'s tensor)."""

    def __init__(self, second: str = "signal") -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.head, self.second = nn.Linear(4, 2), second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        other = {
            "signal": lambda: self.b(x),
            "ones": lambda: torch.ones_like(h),
            "keyword": lambda: self.b(x),
        }[self.second]()
        if self.second == "keyword":
            return self.head(torch.atan2(h, other=other).mean(dim=(2, 3)))
        return self.head(torch.atan2(h, other).mean(dim=(2, 3)))


@pytest.mark.parametrize("shortcut", [True, False], ids=["gradient-shortcut", "copies"])
@pytest.mark.parametrize("mode", ["none", "proportional", "reference"])
@pytest.mark.parametrize("second", ["signal", "keyword"])
def test_a_registered_function_of_two_signals_is_refused(setting, mode, shortcut, second):
    """``atan2(a(x), b(x))`` registered like tanh: "none" returned scores (the second signal's
    copies passed to the gate copy's activation), "proportional" a batch-size ValueError."""
    from ctc_plugin.ctc.speedups import Speedups

    _, x, mask = setting
    torch.manual_seed(0)
    model = _TwoSignals(second).double().eval()
    ctc = CTC(model, bias_sharing=mode)
    ctc._speedups = Speedups(gradient_shortcut=shortcut)
    with register_rule(torch.atan2, like=torch.tanh):
        with pytest.raises(
            UnsupportedOperationError, match=r"through torch\.atan2 in the model"
        ) as error:
            ctc.attribute(x, 1, feature_mask=mask)
    assert "takes one signal argument, its first" in str(error.value)
    assert "other arguments must be constants" in str(error.value)


@pytest.mark.parametrize("mode", ["none", "proportional", "reference"])
def test_a_constant_second_argument_with_one_row_per_copy_is_read_at_the_gate_copy(setting, mode):
    """``atan2(h, torch.ones_like(h))`` is ``atan(h)``: its constant has one row per copy."""
    _, x, mask = setting
    torch.manual_seed(0)
    model = _TwoSignals("ones").double().eval()
    with register_rule(torch.atan2, like=torch.tanh):
        got = CTC(model, bias_sharing=mode).attribute(x, 1, feature_mask=mask)
    model.forward = lambda t: model.head(torch.atan(model.a(t)).mean(dim=(2, 3)))
    with register_rule(torch.atan, like=torch.tanh):
        expected = CTC(model, bias_sharing=mode).attribute(x, 1, feature_mask=mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@torch.library.custom_op("ctc_plugin_tests::own_relu", mutates_args=())
def _own_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU written as a custom operator."""
    return torch.relu(x)


@_own_relu.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@pytest.mark.parametrize("mode", ["reference", "proportional", "none"])
def test_a_relu_custom_operator_registered_like_silu_gives_relu_s_scores(setting, mode):
    """What the docstring says: ``y / x`` of a ReLU is its pattern ``1[x > 0]`` (0 at 0)."""
    _, x, mask = setting
    torch.manual_seed(0)
    model = _Net(_own_relu).double().eval()
    with register_rule(_own_relu, like=nn.functional.silu):
        got = CTC(model, bias_sharing=mode).attribute(x - 0.5, 1, feature_mask=mask)
    model.activation = nn.functional.relu
    expected = CTC(model, bias_sharing=mode).attribute(x - 0.5, 1, feature_mask=mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
