"""A deferred product of two signals (``ctc_plugin.ctc.deferred``) in the corners of its rule.

Each model computes a matrix product of two signals and does something unusual with it; its
scores must be those of the same function written with the product computed at once (an outer
product written with ``*``, whose copies take the uniform rule elementwise), or it must be refused
by name as that function is. Checked here: a gate computed in place from the product
(``sigmoid_``, ``pow_``, a softmax written out with ``exp_``) is a gate, as out of place; ``mT``
is a transpose, and a view without a rule of its own (``diagonal``, ``select``) is no gate when
read as a signal; the product written in place into a tensor that is not one (``zeros[...] = a @
b``, ``ones.add_(a @ b)``) is refused as the product computed at once is, without recursing and
without becoming a bias, while attention scores written into a constant still serve as a gate; a
product of two deferred products takes the rule twice, as at once; and what the copies' replay
keeps holds no reference cycle, so attention scores written in place are freed when the model
lets go of them.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from ctc_plugin import CTC
from ctc_plugin.ctc.speedups import SPEC

from .exactness import assert_refused, feature_scores, random_case
from .test_gates_written_out import TwoBranches

_ABOVE_DIAGONAL = torch.ones(8, 8, dtype=torch.bool).triu(1)


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


def _at_once(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` as an outer product written with ``*``: its copies computed at once."""
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)


def _case(operation, product, scale: float = 0.5):
    """``random_case`` of ``TwoBranches`` computing ``operation(a, b, product)``."""
    return random_case(
        lambda: TwoBranches(lambda a, b: operation(a, b, product), None), scale=scale
    )


def _assert_same_scores(deferred, at_once, modes=("proportional", "none", "reference")) -> None:
    """``deferred`` and ``at_once`` (``operation(a, b, product)``) give the same scores.

    In each of ``modes``, with the default speed-ups and without any (``SPEC``).
    """
    model, x, mask = _case(deferred, _matmul, scale=0.4)
    reference = TwoBranches(lambda a, b: at_once(a, b, _at_once), None).double().eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-10, atol=1e-12)
    for mode in modes:
        for speedups in (None, SPEC):  # the default speed-ups (the gradient shortcut) and none
            expected = feature_scores(reference, x, mask, 1, mode, speedups).scores
            scores = feature_scores(model, x, mask, 1, mode, speedups).scores
            torch.testing.assert_close(scores, expected, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------- gates in place
def _sigmoid_in_place(a, b, product):
    scores = product(a, b)
    scores.sigmoid_()
    return scores * a


def _sigmoid(a, b, product):
    return torch.sigmoid(product(a, b)) * a


def _power_in_place(a, b, product):
    scores = product(a, b)
    scores.pow_(2)
    return scores * a


def _power(a, b, product):
    return product(a, b).pow(2) * a


def _softmax_written_out_in_place(a, b, product):
    scores = product(a, b) * 0.5
    scores.exp_()
    return (scores / scores.sum(-1, keepdim=True)) @ a


def _softmax(a, b, product):
    return torch.softmax(product(a, b) * 0.5, -1) @ a


@pytest.mark.parametrize(
    "in_place, out_of_place",
    [
        (_sigmoid_in_place, _sigmoid),
        (_power_in_place, _power),
        (_softmax_written_out_in_place, _softmax),
    ],
    ids=["sigmoid_", "pow_", "exp_ (a softmax written out)"],
)
def test_a_gate_computed_in_place_from_a_product_is_the_gate_out_of_place(
    in_place, out_of_place
) -> None:
    """The in-place gate ends the deferral as the out-of-place one does (was: refused as stale)."""
    _assert_same_scores(in_place, out_of_place)


# ---------------------------------------------------------------------------- views
def _transposed_by_mT(a, b, product):  # noqa: N802 (the property's name)
    return product(a, b).mT * a


def _diagonal(a, b, product):
    return product(a, b).diagonal(dim1=-2, dim2=-1).unsqueeze(-1) * a


def _selected(a, b, product):
    return product(a, b).select(1, 0).unsqueeze(1) * a


def test_a_product_transposed_by_mT_is_read_as_at_once() -> None:  # noqa: N802 (the name)
    """``x.mT`` swaps the last two dims as ``transpose(-2, -1)`` does: a shape operation."""
    _assert_same_scores(_transposed_by_mT, _transposed_by_mT)


@pytest.mark.parametrize("product", [_at_once, _matmul])
@pytest.mark.parametrize(
    "operation, name",
    [(_diagonal, "diagonal"), (_selected, "select")],
    ids=["diagonal", "select"],
)
def test_a_view_without_a_rule_read_as_a_signal_is_refused_as_at_once(
    operation, name: str, product
) -> None:
    """Was: read as a gate, so each copy got ``b``'s copy times the full image's product."""
    model, x, mask = _case(operation, product)
    message = rf"{name}.*no CTC rule is defined for it"
    assert_refused(model, message, x=x, mask=mask, target=1, modes=("proportional", "none"))


def _transposed_softmax(a, b, product):
    return torch.softmax(product(a, b).mT, -1) @ a


def _transposed_softmax_by_transpose(a, b, product):
    return torch.softmax(product(a, b).transpose(-1, -2), -1) @ a


def test_a_view_without_a_rule_read_as_a_gate_still_is_one() -> None:
    _assert_same_scores(_transposed_softmax, _transposed_softmax_by_transpose)


# ---------------------------------------------------------------------------- written into
def _written_into_zeros(a, b, product):
    written = torch.zeros_like(a)
    written[..., :6] = product(a, b)[..., :6]
    return written + a


def _added_into_ones(a, b, product):
    written = torch.ones_like(a)
    written.add_(product(a, b))
    return written + a


def _multiplied_into_a_softmax(a, b, product):
    written = torch.softmax(b, -1)
    written.mul_(product(a, b))
    return written + a


@pytest.mark.parametrize(
    "operation, message",
    [
        (_added_into_ones, r"add_.*writes the input-dependent signal into a constant"),
        (_multiplied_into_a_softmax, r"mul_.*writes a product with the signal into a gate"),
    ],
    ids=["ones.add_(a @ b)", "softmax(b).mul_(a @ b)"],
)
@pytest.mark.parametrize("product", [_at_once, _matmul])
def test_a_product_written_into_another_tensor_is_refused_as_at_once(
    operation, message: str, product
) -> None:
    """Was: a constant holding the full image's product (a bias), or a RecursionError."""
    model, x, mask = _case(operation, product)
    assert_refused(model, message, x=x, mask=mask, target=1, modes=("proportional", "none"))


def test_a_product_written_into_zeros_is_a_signal_as_at_once() -> None:
    """Was refused (a constant mixed with the signal); zeros are no bias: the deferred product
    is read as a signal there, as the product computed at once is."""
    _assert_same_scores(_written_into_zeros, _written_into_zeros)


def _scores_written_into_a_constant(a, b, product):
    scores = torch.full_like(a, float("-inf"))
    scores[..., :6] = product(a, b)[..., :6] * 0.5
    return torch.softmax(scores, -1) @ a


def _scores_masked(a, b, product):
    columns = torch.arange(8) >= 6
    return torch.softmax((product(a, b) * 0.5).masked_fill(columns, float("-inf")), -1) @ a


def test_attention_scores_written_into_a_constant_are_a_gate() -> None:
    _assert_same_scores(_scores_written_into_a_constant, _scores_masked)


# ---------------------------------------------------------------------------- nested products
def _product_of_products(a, b, product):
    return product(product(a, b), product(b, a)) * 0.5 + a


def _product_of_products_by_einsum(a, b, product):
    if product is _at_once:
        return _product_of_products(a, b, product)
    return torch.einsum("nchw,ncwv->nchv", a @ b, b @ a) * 0.5 + a


@pytest.mark.parametrize("operation", [_product_of_products, _product_of_products_by_einsum])
def test_a_product_of_two_deferred_products_takes_the_rule_twice(operation) -> None:
    """Was: refused as a gate-only output (the replay's own product was taken for copies)."""
    _assert_same_scores(operation, operation)


# ---------------------------------------------------------------------------- memory
def _scaled_in_place(a, b, keep):
    scores = a @ b
    keep(scores)
    scores.mul_(0.5)
    return scores.softmax(-1) @ a


def _masked_by_setitem(a, b, keep):
    scores = a @ b
    keep(scores)
    scores[..., :1] = -1.0
    return scores.softmax(-1) @ a


def _made_contiguous(a, b, keep):
    scores = (a @ b).contiguous()  # returns its input
    keep(scores)
    return scores.softmax(-1) @ a


@pytest.mark.parametrize("operation", [_scaled_in_place, _masked_by_setitem, _made_contiguous])
def test_attention_scores_are_freed_without_the_cycle_collector(operation) -> None:
    """Was: the scores' deferral held a replay that held the scores (a reference cycle)."""
    kept: list[weakref.ref] = []
    model, x, mask = _case(operation, lambda t: kept.append(weakref.ref(t)))
    gc.collect()
    gc.disable()
    try:
        CTC(model).attribute(x, 1, feature_mask=mask)
        alive = [ref for ref in kept if ref() is not None]
    finally:
        gc.enable()
    assert kept
    assert alive == []


# ---------------------------------------------------------------------------- what was fine
def _chunks(a, b, product):
    first, second = product(a, b).chunk(2, dim=-1)
    return torch.cat([first * a[..., :4], second + a[..., 4:]], -1)


def _unbound(a, b, product):
    rows = product(a, b).unbind(1)
    return torch.stack([rows[0] + a[:, 0], rows[1] * 2, rows[2] - a[:, 2], rows[3]], 1)


def _copies_off_dim_zero(a, b, product):
    moved = product(a, b).permute(1, 0, 2, 3)
    return (moved + a.permute(1, 0, 2, 3)).permute(1, 0, 2, 3)


def _batched(a, b, product):
    flat = (a.flatten(0, 1), b.flatten(0, 1))
    out = torch.bmm(*flat) if product is _matmul else product(*flat)
    return out.view_as(a)


def _gate_and_signal(a, b, product):
    scores = product(a, b)
    return torch.softmax(scores, -1) @ a + scores


def _written_into_the_signal(a, b, product):
    written = a.clone()
    written[..., :3] = product(a, b)[..., :3]
    return written


def _signal_written_into_it(a, b, product):
    scores = product(a, b)
    scores[:, :, :2] = a[:, :, :2]
    return scores


def _in_place_activations(a, b, product):
    scores = product(a, b)
    scores.relu_()
    scores.masked_fill_(_ABOVE_DIAGONAL, 0.0)
    return scores + a


@pytest.mark.parametrize(
    "operation",
    [
        _chunks,
        _unbound,
        _copies_off_dim_zero,
        _batched,
        _gate_and_signal,
        _written_into_the_signal,
        _signal_written_into_it,
        _in_place_activations,
    ],
)
def test_the_deferred_copies_equal_the_product_at_once(operation) -> None:
    _assert_same_scores(operation, operation)
