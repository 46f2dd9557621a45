"""Forward functions whose output the traced copies did not produce (issue 20).

CTC runs the forward function once on a batch of feature copies and reads each copy's output
through the operations it follows. A forward function that takes the values out of torch (a
numpy, list or Python number round trip of its input, an activation or its output), ignores its
argument (a constant, ``model(torch.zeros_like(x))``, an output computed before the call, a
clone of the input captured in a closure) gave scores that did not add up to the output, without
a word. Each class is tried with several forward functions, models, batches and all three bias
sharings, and must raise :class:`~ctc_plugin.ctc.errors.UntracedOutputError` leaving the model as
it was. Forward functions that compute their output from their argument in torch (lambdas,
``functools.partial``, ``additional_forward_args``, ``.detach()`` or ``torch.no_grad()`` inside,
logging values with ``.tolist()``) must give exactly the model's scores.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from torch import nn

from ctc_plugin import CTC, CTCAttributor, CTCComposite, UnsupportedOperationError
from ctc_plugin.ctc.errors import UntracedOutputError
from ctc_plugin.features import GridSegmenter
from ctc_plugin.testing import (
    CNNSpec,
    ModernSpec,
    RandomCNN,
    RandomModernCNN,
    RandomTransformer,
    TransformerSpec,
)
from tests.strategies import CLASSES, grid_images, small_cnns

MODES = ["reference", "proportional", "none"]
Forward = Callable[..., torch.Tensor]


# ---------------------------------------------------------------------------- the model's parts
def trunk(model: RandomCNN, t: torch.Tensor) -> torch.Tensor:
    """RandomCNN's forward up to its last block (its activations before pooling)."""
    if model.spec.normalise:
        t = (t - model.mean) / model.std
    return model.blocks(F.relu(model.stem(t)))


def head(model: RandomCNN, t: torch.Tensor) -> torch.Tensor:
    """RandomCNN's forward from the last block's activations: pooling and the linear head."""
    return model.head(torch.flatten(F.adaptive_avg_pool2d(t, 1), 1))


def through_numpy(t: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(t.detach().numpy())


# ---------------------------------------------------------------------------- refused forwards
# Each builder takes (model, x) (x: the images being explained) and returns a forward function.
OUTPUT_ROUND_TRIPS = {
    "from_numpy(output)": lambda m, x: lambda t: through_numpy(m(t)),
    "as_tensor(np.asarray(output))": lambda m, x: (
        lambda t: torch.as_tensor(np.asarray(m(t).detach()))
    ),
    "tensor(output.numpy()) in float64": lambda m, x: (
        lambda t: torch.tensor(m(t).detach().numpy().astype(np.float64)).float()
    ),
    "numpy without detach": lambda m, x: lambda t: torch.from_numpy(m(t).numpy()),
}
INPUT_ROUND_TRIPS = {
    "model(from_numpy(input))": lambda m, x: lambda t: m(through_numpy(t)),
    "model(as_tensor(np.asarray(input)))": lambda m, x: lambda t: m(torch.as_tensor(np.asarray(t))),
    "model(from_numpy(input.numpy().copy()))": lambda m, x: (
        lambda t: m(torch.from_numpy(t.detach().numpy().copy()))
    ),
}
ACTIVATION_ROUND_TRIPS = {
    "head(numpy(trunk))": lambda m, x: lambda t: head(m, through_numpy(trunk(m, t))),
    "head(tensor(trunk.numpy()))": lambda m, x: (
        lambda t: head(m, torch.tensor(trunk(m, t).detach().numpy()))
    ),
    "blocks(numpy(stem))": lambda m, x: (
        lambda t: head(m, m.blocks(through_numpy(F.relu(m.stem(t)))))
    ),
}
# The round trip rejoins the traced signal: the output is traced, but a tensor that differs
# between the copies entered the pass as a constant.
PARTIAL_ROUND_TRIPS = {
    "residual + numpy(activation)": lambda m, x: (
        lambda t: head(m, trunk(m, t) + through_numpy(trunk(m, t)))
    ),
    "input / numpy(max)": lambda m, x: (
        lambda t: m(t / torch.from_numpy(np.abs(t.numpy()).max(axis=(1, 2, 3), keepdims=True) + 1))
    ),
    "input * numpy(mean)": lambda m, x: (
        lambda t: m(t * torch.from_numpy(t.numpy().mean(axis=(1, 2, 3), keepdims=True)))
    ),
    "input - numpy(mean)": lambda m, x: (
        lambda t: m(t - torch.from_numpy(t.numpy().mean(axis=(1, 2, 3), keepdims=True)))
    ),
    "cat(activation, numpy(activation))": lambda m, x: (
        lambda t: head(m, torch.cat([trunk(m, t), through_numpy(trunk(m, t))], dim=1))
    ),
}
PYTHON_ROUND_TRIPS = {
    "tensor(output.tolist())": lambda m, x: lambda t: torch.tensor(m(t).tolist()),
    "model(tensor(input.tolist()))": lambda m, x: lambda t: m(torch.tensor(t.tolist())),
    "floats of the output": lambda m, x: (
        lambda t: torch.tensor([[float(v) for v in row] for row in m(t).tolist()])
    ),
    "floats of an activation": lambda m, x: lambda t: head(m, torch.tensor(trunk(m, t).tolist())),
}
IGNORED_INPUTS = {
    "constant": lambda m, x: lambda t: torch.ones(t.shape[0], CLASSES),
    "new_ones of the input": lambda m, x: lambda t: t.new_ones(t.shape[0], CLASSES),
    "model(zeros_like(input))": lambda m, x: lambda t: m(torch.zeros_like(t)),
    "model(full_like(input, 0.5))": lambda m, x: lambda t: m(torch.full_like(t, 0.5)),
    "output cached before the call": lambda m, x: (lambda cached: lambda t: cached)(m(x).detach()),
    "cached output repeated to the batch": lambda m, x: (
        lambda cached: lambda t: cached.repeat_interleave(t.shape[0] // len(cached), 0)
    )(m(x).detach()),
}
CLOSURES = {
    "model(clone of the input)": lambda m, x: (lambda x0: lambda t: m(x0))(x.clone()),
    "model(clone repeated to the batch)": lambda m, x: (
        lambda x0: lambda t: m(x0.repeat_interleave(t.shape[0] // len(x0), 0))
    )(x.clone()),
    "head(trunk(clone))": lambda m, x: (lambda x0: lambda t: head(m, trunk(m, x0)))(x.clone()),
}
REFUSED = {
    "output": OUTPUT_ROUND_TRIPS,
    "input": INPUT_ROUND_TRIPS,
    "activation": ACTIVATION_ROUND_TRIPS,
    "partial": PARTIAL_ROUND_TRIPS,
    "python": PYTHON_ROUND_TRIPS,
    "ignored": IGNORED_INPUTS,
    "closure": CLOSURES,
}
REFUSED_CASES = [(kind, name) for kind, cases in REFUSED.items() for name in cases]


def model_state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, before: dict) -> None:
    """No hooks, no function mode, gradients as before, parameters and buffers unchanged."""
    assert torch._C._len_torch_function_stack() == 0
    assert torch.is_grad_enabled()
    assert not model.training
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks
        assert "bias" not in module.__dict__  # no bias left shadowed by a hooked pass
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("kind", "name"), REFUSED_CASES)
@settings(max_examples=2, deadline=None)
@given(model=small_cnns(), data=grid_images())
def test_forward_functions_whose_output_the_copies_did_not_produce_are_refused(
    kind, name, mode, model, data
):
    x, mask = data
    forward = REFUSED[kind][name](model, x)
    before = model_state(model)
    with pytest.raises(UntracedOutputError) as caught:
        CTC(forward, bias_sharing=mode).attribute(x, target=1, feature_mask=mask)
    message = str(caught.value)
    assert "not computed from" in message and "CTC runs the forward function" in message
    assert "Return model(x)" in message  # what to do instead
    assert_untouched(model, before)


@pytest.mark.parametrize("mode", MODES)
def test_the_error_names_what_went_wrong(mode):
    model = RandomCNN(CNNSpec(classes=CLASSES))
    x = torch.rand(2, 3, 12, 12)
    mask = GridSegmenter(3)(x)

    def message(forward: Forward) -> str:
        with pytest.raises(UntracedOutputError) as caught:
            CTC(forward, bias_sharing=mode).attribute(x, target=0, feature_mask=mask)
        return str(caught.value)

    assert "torch.Tensor.numpy took their values out of torch" in message(
        OUTPUT_ROUND_TRIPS["from_numpy(output)"](model, x)
    )
    assert "torch.Tensor.tolist took" in message(
        PYTHON_ROUND_TRIPS["tensor(output.tolist())"](model, x)
    )
    assert "ignores its argument" in message(IGNORED_INPUTS["model(zeros_like(input))"](model, x))
    closure = message(CLOSURES["model(clone of the input)"](model, x))
    # the copies' batch has more rows than the images, but "none" passes the images themselves
    assert "captured" in closure and ("has 2 rows" in closure or mode == "none")
    partial = message(PARTIAL_ROUND_TRIPS["residual + numpy(activation)"](model, x))
    assert "torch.Tensor.add combines them with a tensor that differs between the copies" in partial
    assert "torch.Tensor.numpy took" in partial
    assert isinstance(UntracedOutputError("x"), ValueError)  # a bad forward_func argument


def test_an_untraced_model_is_refused_by_the_zennit_attributor_too():
    """CTCAttributor runs the copies through its hooks; an output they did not make is refused."""

    class NumpyHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = RandomCNN(CNNSpec(classes=CLASSES))

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return through_numpy(self.net(t))

    class ZerosInput(NumpyHead):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.net(torch.zeros_like(t))

    x = torch.rand(2, 3, 12, 12)
    mask = GridSegmenter(2)(x)
    for model in (NumpyHead().eval(), ZerosInput().eval()):
        before = model_state(model)
        for sharing in MODES:
            composite = CTCComposite(bias_sharing=sharing)
            with pytest.raises(UntracedOutputError):
                with CTCAttributor(model, composite, feature_mask=mask) as attributor:
                    attributor(x, torch.eye(CLASSES)[[0, 1]])
            assert_untouched(model, before)
    model = ZerosInput().eval()
    with pytest.raises(UntracedOutputError):
        CTCAttributor(model, CTCComposite(), feature_mask=mask, functional="raise")(
            x, torch.eye(CLASSES)[[0, 1]]
        )
    assert_untouched(model, model_state(model))


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_a_torchscript_model_is_refused():
    """TorchScript runs outside Python's torch functions, so CTC could follow none of them."""
    x = torch.rand(2, 3, 12, 12)
    traced = torch.jit.trace(RandomCNN(CNNSpec(classes=CLASSES)), x)
    scripted = torch.jit.script(
        nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)
        ).eval()
    )
    for model in (traced, scripted):
        for mode in MODES:
            with pytest.raises(UntracedOutputError, match="TorchScript"):
                CTC(model, bias_sharing=mode).attribute(x, 0, feature_mask=GridSegmenter(2)(x))


# ---------------------------------------------------------------------------- accepted forwards
def scaled(t: torch.Tensor, scale: torch.Tensor, model: nn.Module) -> torch.Tensor:
    return model(t * scale)


ACCEPTED = {
    "bound method": lambda m: (m.forward, ()),
    "lambda": lambda m: (lambda t: m(t), ()),
    "lambda slicing the logits": lambda m: (lambda t: m(t)[:, :CLASSES], ()),
    "functools.partial": lambda m: (functools.partial(scaled, scale=1.0, model=m), ()),
    "linear torch ops in the wrapper": lambda m: (
        lambda t: m(torch.flip(torch.flip(t * 4.0, dims=[3]), dims=[3]) / 4.0),
        (),
    ),
    "clone, contiguous, to": lambda m: (lambda t: m(t.clone().contiguous()).to(t.dtype), ()),
    "detach inside": lambda m: (lambda t: m(t.detach()), ()),
    "detach of the output": lambda m: (lambda t: m(t).detach(), ()),
    "detach of an activation": lambda m: (lambda t: head(m, trunk(m, t).detach()), ()),
    "no_grad inside": lambda m: (lambda t: _no_grad(m, t), ()),
    "values logged with tolist": lambda m: (
        lambda t: (t.mean(dim=(1, 2, 3)).tolist(), m(t))[1],
        (),
    ),
}


def _no_grad(model: nn.Module, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(t)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ACCEPTED)
@settings(max_examples=2, deadline=None)
@given(model=small_cnns(), data=grid_images())
def test_forward_functions_computing_from_their_argument_give_the_models_scores(
    name, mode, model, data
):
    x, mask = data
    forward, extra = ACCEPTED[name](model)
    _, expected = CTC(model, bias_sharing=mode).attribute(
        x, 1, feature_mask=mask, return_feature_scores=True
    )
    _, scores = CTC(forward, bias_sharing=mode).attribute(
        x, 1, feature_mask=mask, additional_forward_args=extra or None, return_feature_scores=True
    )
    # "none" falls back from its gradient shortcut to the copies' forward pass when the forward
    # function detaches them: the same scores up to rounding
    torch.testing.assert_close(scores.scores, expected.scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores.output, expected.output)


@pytest.mark.parametrize("mode", MODES)
def test_additional_forward_args_per_example_are_no_untraced_constants(mode):
    """Per-example extra tensors are repeated for every copy: the same rows, so accepted.

    The wrapper also normalises with constants (biases CTC shares among the features), so only
    the output is compared with the model's; in ``"proportional"`` the scores add up to it.
    """
    model = RandomCNN(CNNSpec(classes=CLASSES, residual=True), seed=3)
    x = torch.rand(3, 3, 12, 12)
    mask = GridSegmenter(3)(x)
    scale = torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1, 1)
    offset = torch.randn(3, CLASSES)
    factor = torch.rand(3, 1, 12, 12) + 0.5

    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), 0.25

    def forward(t, scale, offset, factor, name):
        assert name == "extra"
        logits = model((t * scale * factor - mean) / std)
        return logits + offset + torch.cat([offset[:, :1], offset[:, 1:]], dim=1)

    _, scores = CTC(forward, bias_sharing=mode).attribute(
        x,
        2,
        feature_mask=mask,
        additional_forward_args=(scale, offset, factor, "extra"),
        return_feature_scores=True,
    )
    expected = forward(x, scale, offset, factor, "extra")[:, 2].detach()
    torch.testing.assert_close(scores.output, expected)
    if mode == "proportional":
        torch.testing.assert_close(scores.scores.sum(1), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "model",
    [
        RandomCNN(CNNSpec(residual=True, concat=True, normalise=True, classes=CLASSES), seed=1),
        RandomModernCNN(ModernSpec(norm="batch", squeeze="sigmoid"), seed=1),
        RandomModernCNN(ModernSpec(norm="layer", activation="gelu", head_norm=True), seed=2),
        RandomTransformer(TransformerSpec(attention="explicit"), seed=3),
        RandomTransformer(TransformerSpec(attention="mha", class_token=True), seed=4),
        RandomTransformer(TransformerSpec(attention="window", class_token=False), seed=5),
    ],
    ids=["cnn", "modern-bn-se", "modern-ln-gelu", "vit-explicit", "vit-mha", "swin-window"],
)
def test_other_model_families_and_their_softmax_gates_are_accepted(mode, model, monkeypatch):
    """Class tokens, position embeddings, attention softmaxes: constants and gates, traced.

    In ``"none"`` mode their gradient shortcut is taken (no fall back to the copies' pass).
    """
    x = torch.rand(2, 3, 8, 8)
    mask = GridSegmenter(2)(x)
    if mode == "none":
        monkeypatch.setattr(CTC, "_run", lambda *args: pytest.fail("the gradient path fell back"))
    for forward in (model, lambda t: model(t), functools.partial(model.forward)):
        _, scores = CTC(forward, bias_sharing=mode).attribute(
            x, 0, feature_mask=mask, return_feature_scores=True
        )
        torch.testing.assert_close(scores.output, model(x)[:, 0].detach())


def test_a_softmax_wrapper_is_refused_as_before_not_as_untraced():
    """Probabilities out of a softmax are the full pass's gate: explain the logits instead."""
    model = RandomCNN(CNNSpec(classes=CLASSES))
    x = torch.rand(1, 3, 12, 12)
    for mode in MODES:
        with pytest.raises(UnsupportedOperationError, match="explain the logits"):
            CTC(lambda t: torch.softmax(model(t), dim=1), bias_sharing=mode).attribute(
                x, 0, feature_mask=GridSegmenter(2)(x)
            )
