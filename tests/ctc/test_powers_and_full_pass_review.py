"""Review of powers as rescale gates, gate-only results of gate tensors, addcmul and repeats.

Inputs the tests of ``test_gates_written_out.py`` did not try:

- ``addcmul``/``addcdiv`` must give what they stand for written out (``a + value * (t1 * t2)``):
  the same scores, or the same refusal. A gate-only product times ``value``, or a gate-only
  factor times a constant, lost its gate-only mark inside the composed rule and was added to
  every copy of the signal as a signal (the scores did not add up to the logit, silently).
- ``addcmul(input, value, tensor1, tensor2)``, the deprecated signature torch still takes, read
  ``value`` as ``tensor1`` and left ``tensor2`` out (silently).
- An operation without a rule of gate tensors that are not gate-only (a sigmoid's output) is
  computed on the full pass; written in place (``sqrt_``, ``fill_``) or through a view, it puts
  the full image's value into every copy of a tensor still read as the signal's copies, so it
  is refused, as it was before powers became gate tensors.
- A constant with one row per copy that differs between the copies (taken out of torch and
  back), met by a gate tensor, must be refused by CTC, not crash inside torch: pinned.
- What is exact and stays so: normalisations written out with ``pow`` in every path (float32
  too), a power used both as a gate and as a signal, ``repeat_interleave`` with the copies moved
  off dim 0 and on windows, ``unfold``/``fold`` with a gate, the sparse copies, and small timm
  models of families the other tests do not build (EvoNorm, NFNet, ConViT, ...).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from ctc_plugin.ctc.errors import UnsupportedOperationError, UntracedOutputError
from ctc_plugin.ctc.speedups import Speedups
from ctc_plugin.model_families import timm_classifier

from .exactness import (
    assert_equals_the_spec,
    assert_none_is_gradient_x_input,
    assert_proportional_adds_up,
    assert_zennit_equals_captum,
    feature_scores,
    held_fixed,
    random_case,
)
from .test_gates_written_out import C, TwoBranches

Operation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _case(operation: Operation, linearised: Operation | None = None):
    """``TwoBranches`` of ``operation`` (see ``random_case``): two images, a 3 x 3 grid."""
    return random_case(lambda: TwoBranches(operation, linearised or operation))


def _weights(a: torch.Tensor) -> torch.Tensor:
    """A constant per channel, (C, 1, 1), in ``a``'s dtype."""
    return torch.linspace(0.5, 1.5, C, dtype=a.dtype).view(C, 1, 1)


def _softmax(b: torch.Tensor) -> torch.Tensor:
    """A softmax over each channel's positions: a gate-only tensor of the full pass."""
    return torch.softmax(b.flatten(2), -1).view_as(b)


def _deprecated_addcmul(*args: object) -> torch.Tensor:
    """``torch.addcmul(input, value, tensor1, tensor2)``: torch still takes it, with a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.addcmul(*args)


#: name -> (addcmul/addcdiv, the same written out as a product, a scale and a sum)
ADD_PRODUCTS: dict[str, tuple[Operation, Operation]] = {
    "addcmul(a, sigmoid(b), sigmoid(a), value=0.5)": (
        lambda a, b: torch.addcmul(a, torch.sigmoid(b), torch.sigmoid(a), value=0.5),
        lambda a, b: a + torch.sigmoid(b) * torch.sigmoid(a) * 0.5,
    ),
    "addcmul(a, softmax(b), w)": (
        lambda a, b: torch.addcmul(a, _softmax(b), _weights(a)),
        lambda a, b: a + _softmax(b) * _weights(a),
    ),
    "addcmul(a, softmax(b), a, value=0.5)": (
        lambda a, b: torch.addcmul(a, _softmax(b), a, value=0.5),
        lambda a, b: a + _softmax(b) * a * 0.5,
    ),
    "addcmul(a, softmax(b), a, value=0)": (
        lambda a, b: torch.addcmul(a, _softmax(b), a, value=0.0),
        lambda a, b: a + _softmax(b) * a * 0.0,
    ),
    "a * addcmul(w, softmax(b), w, value=0.5)": (
        lambda a, b: a * torch.addcmul(_weights(a), _softmax(b), _weights(a), value=0.5),
        lambda a, b: a * (_weights(a) + _softmax(b) * _weights(a) * 0.5),
    ),
    "a * addcmul(sigmoid(a), sigmoid(b), sigmoid(b), value=0.3)": (
        lambda a, b: (
            a * torch.addcmul(torch.sigmoid(a), torch.sigmoid(b), torch.sigmoid(b), value=0.3)
        ),
        lambda a, b: a * (torch.sigmoid(a) + torch.sigmoid(b) * torch.sigmoid(b) * 0.3),
    ),
    "addcmul(a, sigmoid(b), w, value=2)": (
        lambda a, b: torch.addcmul(a, torch.sigmoid(b), _weights(a), value=2.0),
        lambda a, b: a + torch.sigmoid(b) * _weights(a) * 2.0,
    ),
    "addcmul(a, 0.5, sigmoid(b), b) (deprecated signature)": (
        lambda a, b: _deprecated_addcmul(a, 0.5, torch.sigmoid(b), b),
        lambda a, b: a + torch.sigmoid(b) * b * 0.5,
    ),
    "addcdiv(a, b, 2 + sigmoid(a), value=3)": (
        lambda a, b: torch.addcdiv(a, b, 2.0 + torch.sigmoid(a), value=3.0),
        lambda a, b: a + b / (2.0 + torch.sigmoid(a)) * 3.0,
    ),
}


def _scores_or_refusal(model, x, mask, mode: str) -> torch.Tensor | None:
    """CTC's feature scores in ``mode``, or ``None`` where CTC refuses the model."""
    try:
        return feature_scores(model, x, mask, 1, mode).scores
    except UnsupportedOperationError:
        return None


@pytest.mark.parametrize("mode", ["proportional", "none"])
@pytest.mark.parametrize("kind", ADD_PRODUCTS)
def test_addcmul_gives_what_it_stands_for_written_out(kind: str, mode: str) -> None:
    fused, written = ADD_PRODUCTS[kind]
    model, x, mask = _case(fused)
    reference, _, _ = _case(written)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-12, atol=1e-12)
    expected = _scores_or_refusal(reference, x, mask, mode)
    scores = _scores_or_refusal(model, x, mask, mode)
    assert (scores is None) == (expected is None), f"written out: {expected}, fused: {scores}"
    if expected is not None:
        torch.testing.assert_close(scores, expected, rtol=1e-9, atol=1e-12)


def _sqrt_in_place(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(b).sqrt_() + a


def _filled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    gate = torch.sigmoid(b)
    gate.fill_(0.5)
    return gate + a


def _written_through_a_view(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    gate = torch.sigmoid(b)
    gate.diagonal(dim1=2, dim2=3).mul_(2.0)
    return gate + a


IN_PLACE = "in place on a gate tensor whose copies are a signal's.*write it out of place"


@pytest.mark.parametrize(
    ("operation", "said"),
    [
        (_sqrt_in_place, IN_PLACE),
        (_filled, IN_PLACE),
        (_written_through_a_view, "takes a view of a gate tensor whose copies are a signal's"),
    ],
    ids=["sigmoid(b).sqrt_()", "sigmoid(b).fill_(0.5)", "sigmoid(b).diagonal().mul_(2)"],
)
def test_a_gate_tensor_changed_in_place_without_a_rule_is_refused_by_name(operation, said):
    """A gate tensor whose copies are a signal's, changed in place (or through a view), has no
    rule: refused with what to do (the test said "exact or refused", and its exactness check
    never ran: each is refused)."""
    model, x, mask = _case(operation)
    with pytest.raises(UnsupportedOperationError, match=said):
        feature_scores(model, x, mask, 1, "proportional")


def _through_numpy(gate: Callable[[torch.Tensor], torch.Tensor]) -> Operation:
    """``a * atan2(gate(b), b)`` with ``b`` taken out of torch and back: an untraced constant."""

    def operation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        untraced = torch.from_numpy(b.detach().numpy().copy())
        return a * torch.atan2(gate(b), untraced)

    return operation


@pytest.mark.parametrize("gate", [torch.sigmoid, _softmax], ids=["sigmoid", "softmax"])
def test_an_untraced_constant_met_by_a_gate_tensor_is_refused_by_ctc(gate) -> None:
    model, x, mask = _case(_through_numpy(gate))
    with pytest.raises((UntracedOutputError, UnsupportedOperationError)):
        feature_scores(model, x, mask, 1, "proportional")


def _normalised_by_hand(centre: bool, detached: bool) -> Operation:
    """LayerNorm (``centre``) or RMSNorm over channels written with ``pow``; statistic fixed."""

    def operation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = a - a.mean(1, keepdim=True) if centre else a
        s = d.pow(2).mean(1, keepdim=True)
        s = s.detach() if detached else s
        return d / torch.sqrt(s + 1e-5) if centre else d * torch.rsqrt(s + 1e-6)

    return operation


def _windows(a: torch.Tensor) -> torch.Tensor:
    """(rows, C, 8, 8) as 4 windows of 4 x 4 per row, copy-major: (rows * 4, C, 4, 4)."""
    return a.reshape(a.shape[0], C, 2, 4, 2, 4).permute(0, 2, 4, 1, 3, 5).reshape(-1, C, 4, 4)


def _global_query(a: torch.Tensor, detached: bool = False) -> torch.Tensor:
    """GCViT's global query: each row's pooled channels, repeated once per window, gating."""
    query = torch.sigmoid(a.mean((2, 3)).repeat_interleave(4, dim=0))[:, :, None, None]
    gated = _windows(a) * (query.detach() if detached else query)
    return gated.reshape(a.shape[0], 4, C, 4, 4).sum(1).repeat(1, 1, 2, 2)


def _repeated_off_dim_zero(a: torch.Tensor) -> torch.Tensor:
    """Each row repeated 3 times along dim 1 (the copies moved there), weighted, summed back."""
    moved = a.permute(1, 0, 2, 3).repeat_interleave(3, dim=1)
    weights = torch.linspace(0.5, 1.5, 3, dtype=a.dtype).repeat(a.shape[0])
    back = (moved * weights.view(1, -1, 1, 1)).permute(1, 0, 2, 3)
    return back.reshape(a.shape[0], 3, C, 8, 8).sum(1)


def _unfolded_gate(a: torch.Tensor, b: torch.Tensor, detached: bool = False) -> torch.Tensor:
    gate = torch.sigmoid(F.unfold(b, 2, stride=2))
    patches = F.unfold(a, 2, stride=2) * (gate.detach() if detached else gate)
    return F.fold(patches, (8, 8), 2, stride=2)


#: name -> (the operation, the same with its gates held fixed)
EXACT: dict[str, tuple[Operation, Operation]] = {
    "LayerNorm by hand": (
        _normalised_by_hand(centre=True, detached=False),
        _normalised_by_hand(centre=True, detached=True),
    ),
    "RMSNorm by hand": (
        _normalised_by_hand(centre=False, detached=False),
        _normalised_by_hand(centre=False, detached=True),
    ),
    "a.pow(2) as a gate and as a signal": (
        lambda a, b: a.pow(2) + a * a.pow(2).mean(1, keepdim=True),
        lambda a, b: a * a.detach() + a * a.pow(2).mean(1, keepdim=True).detach(),
    ),
    "b * relu(a) ** 2": (
        lambda a, b: b * F.relu(a) ** 2,
        lambda a, b: b * (F.relu(a) ** 2).detach(),
    ),
    "relu(a) ** 1.5": (
        lambda a, b: F.relu(a) ** 1.5,
        lambda a, b: F.relu(a) * (F.relu(a) ** 0.5).detach(),
    ),
    "(|a| + 0.5) ** -1": (
        lambda a, b: (a.abs() + 0.5) ** -1,
        lambda a, b: (a.abs() + 0.5) * ((a.abs() + 0.5) ** -2).detach(),
    ),
    "a * sqrt(a.pow(2) + 1)": (
        lambda a, b: a * (a.pow(2) + 1.0).sqrt(),
        lambda a, b: a * (a.pow(2) + 1.0).sqrt().detach(),
    ),
    "global query repeat_interleave per window": (
        lambda a, b: _global_query(a),
        lambda a, b: _global_query(a, detached=True),
    ),
    "repeat_interleave on windows": (
        lambda a, b: _windows(a).repeat_interleave(2, dim=0).reshape(-1, 8, C, 4, 4).mean(1),
        lambda a, b: _windows(a).repeat_interleave(2, dim=0).reshape(-1, 8, C, 4, 4).mean(1),
    ),
    "repeat_interleave with the copies on dim 1": (
        lambda a, b: _repeated_off_dim_zero(a),
        lambda a, b: _repeated_off_dim_zero(a),
    ),
    "unfold * sigmoid(unfold), fold": (
        _unfolded_gate,
        lambda a, b: _unfolded_gate(a, b, detached=True),
    ),
}


@pytest.mark.parametrize("kind", EXACT)
def test_exact_in_every_path(kind: str) -> None:
    model, x, mask = _case(*EXACT[kind])
    scores = assert_proportional_adds_up(model, x, mask, 1, rtol=1e-10, atol=1e-10)
    assert_equals_the_spec(model, x, mask, 1, scores, rtol=1e-9, atol=1e-12)
    sparse = Speedups(sparse_copies=True, sparse_dense_above=2.0)
    dense = feature_scores(model, x, mask, 1, "proportional", sparse).scores
    torch.testing.assert_close(dense, scores.scores, rtol=1e-9, atol=1e-12)
    alone = assert_proportional_adds_up(model, x[:1], mask, 1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(alone.scores, scores.scores[:1], rtol=1e-9, atol=1e-12)
    assert_none_is_gradient_x_input(
        model, x, mask, 1, held_fixed(model), same_output={}, rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
@pytest.mark.parametrize("kind", ["RMSNorm by hand", "global query repeat_interleave per window"])
def test_the_zennit_attributor_equals_the_captum_class(kind: str, mode: str) -> None:
    model, x, mask = _case(*EXACT[kind])
    assert_zennit_equals_captum(model, x, mask, 1, mode)


@pytest.mark.parametrize("centre", [True, False], ids=["LayerNorm", "RMSNorm"])
def test_normalisations_by_hand_in_float32_add_up_within_rounding(centre: bool) -> None:
    model, x, mask = _case(
        _normalised_by_hand(centre, detached=False), _normalised_by_hand(centre, detached=True)
    )
    model, x = model.float(), x.float()
    assert_proportional_adds_up(model, x, mask, 1, relative=1e-5)
    assert_none_is_gradient_x_input(
        model, x, mask, 1, held_fixed(model), same_output={}, rtol=1e-5, atol=1e-6
    )


#: small timm models of families the other tests do not build, and what they bring
TIMM_MODELS = {
    "test_efficientnet_evos": "EvoNorm: x.float().square().mean(...).add(eps).sqrt_()",
    "test_nfnet": "scaled weight standardisation",
    "test_vit3": "a small ViT variant",
    "test_convnext2": "ConvNeXt LayerNorm2d",
    "convit_tiny": "gated positional self-attention",
}


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_families_are_exact(name: str) -> None:
    pytest.importorskip("timm")
    from .test_timm_families import SIZE, _inputs

    model, (x, mask) = timm_classifier(name, SIZE), _inputs(SIZE)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    scores = assert_proportional_adds_up(model, x, mask, 1, relative=1e-10)
    assert_equals_the_spec(model, x, mask, 1, scores, relative=1e-9)
    alone = assert_proportional_adds_up(model, x[1:], mask, 1, relative=1e-10)
    torch.testing.assert_close(alone.scores, scores.scores[1:], rtol=1e-9, atol=1e-12)
    shortcut = feature_scores(model, x, mask, 1, "none").scores
    copies = feature_scores(model, x, mask, 1, "none", Speedups(gradient_shortcut=False)).scores
    torch.testing.assert_close(shortcut, copies, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(feature_scores(model, x, mask, 1, "reference").scores).all()
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
