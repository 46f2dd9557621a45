"""A matrix product of two signals read as a signal takes the uniform rule, computed when needed.

``q @ k^T`` feeding a softmax is attention scores: the full pass's value alone matters and no
copy is computed (a gate-only tensor). Read as a signal instead (CoaT's ``q @ (softmax(k)^T v)``,
linear attention's ``q @ (k^T v)`` divided by its normaliser, bilinear pooling, scores added to
the signal), its copies are ``(a_k b_0 + a_0 b_k) / 2``, computed at that point by replaying the
operations in between (scaling, masking, slicing, sums, layers, in place too). Checked here:
``"proportional"`` adds up and equals the spec, ``"none"`` is gradient x input of the network
with the other factor held fixed (half each), the Zennit attributor equals the Captum class, the
deferred copies equal the uniform rule computed at once (an outer product as ``matmul`` and as
``*``), attention never computes them, and what would make them wrong is refused by name.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ctc_plugin.ctc.attention as attention
from ctc_plugin.ctc.deferred import MAX_DEPTH

from .exactness import (
    assert_none_is_gradient_x_input,
    assert_proportional_adds_up,
    assert_proportional_is_exact,
    assert_refused,
    assert_zennit_equals_captum,
    feature_scores,
    held_fixed,
    random_case,
)
from .test_gates_written_out import TwoBranches

_LOWER_TRIANGLE = torch.ones(8, 8, dtype=torch.bool).tril()


def _uniform(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with each factor's other factor held fixed, half each (the uniform rule)."""
    return (a @ b.detach() + a.detach() @ b) / 2


def _einsum(a, b, product):
    if product is _uniform:
        equation = "nchw,ncwv->nchv"
        return (torch.einsum(equation, a, b.detach()) + torch.einsum(equation, a.detach(), b)) / 2
    return torch.einsum("nchw,ncwv->nchv", a, b)


def _masked_scores(a, b, product):
    scores = product(a, b.transpose(-1, -2)) * 0.5
    return scores.masked_fill(_LOWER_TRIANGLE, 0.0)[..., :6] + a[..., 2:]


def _in_place(a, b, product):
    scores = product(a, b)
    scores.mul_(0.5)
    scores += a
    return scores


def _linear_attention(a, b, product):
    """EfficientViT's LiteMLA: ReLU kernels, ones padded to the values, divided by the sums."""
    q, k, v = F.relu(a), F.relu(b), F.pad(a, (0, 1), value=1.0)
    out = product(q, product(k.transpose(-1, -2), v))
    divisor = out[..., -1:] + 1e-3
    return out[..., :-1] / (divisor.detach() if product is _uniform else divisor)


def _factorised_attention(a, b, product):
    """CoaT's factorised attention: ``q @ (softmax(k)^T v)`` plus a product with a convolution."""
    fixed = product is _uniform  # the network with its gates held fixed
    probabilities = torch.softmax(b, dim=-2)
    mixed = (probabilities.detach() if fixed else probabilities).transpose(-1, -2) @ a
    elementwise = (a * b.detach() + a.detach() * b) / 2 if fixed else a * b
    return 0.25 * product(a, mixed) + elementwise


def _causal(a, b, product):
    """Causal linear attention: the scores' upper triangle zeroed, then the values mixed."""
    scores = product(a, b.transpose(-1, -2))
    return product(scores.tril(), a) + product(scores.triu(1), b)


def _long_chain(a, b, product):
    scores = product(a, b)
    for _ in range(MAX_DEPTH + 4):
        scores = scores * 0.9
    return scores + a


#: name -> how the model computes it from the two branches and a matrix product
KINDS = {
    "a @ b (the output)": lambda a, b, product: product(a, b),
    "einsum('nchw,ncwv->nchv', a, b)": lambda a, b, product: _einsum(a, b, product),
    "scaled, masked, sliced, added to the signal": _masked_scores,
    "scaled and added in place": _in_place,
    "linear attention": _linear_attention,
    "factorised attention": _factorised_attention,
    "causal (tril, triu)": _causal,
    f"{MAX_DEPTH + 4} operations, then added to the signal": _long_chain,
}


def _case(kind: str, bias: bool = True):
    operation = KINDS[kind]
    return random_case(
        lambda: TwoBranches(
            lambda a, b: operation(a, b, torch.matmul),
            lambda a, b: operation(a, b, _uniform),
            bias=bias,
        ),
        scale=0.4,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_proportional_adds_up_and_equals_the_spec(kind: str) -> None:
    model, x, mask = _case(kind)
    assert assert_proportional_is_exact(model, x, mask, 1).scores.std() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_none_is_gradient_x_input_with_half_to_each_factor(kind: str) -> None:
    model, x, mask = _case(kind)
    assert_none_is_gradient_x_input(
        model, x, mask, 1, held_fixed(model), same_output={}, rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
@pytest.mark.parametrize(
    "kind", ["a @ b (the output)", "linear attention", "scaled and added in place"]
)
def test_the_zennit_attributor_equals_the_captum_class(kind: str, mode: str) -> None:
    model, x, mask = _case(kind)
    assert_zennit_equals_captum(model, x, mask, 1, mode)


def _outer_by_matmul(a, b):
    return (a.unsqueeze(-1) @ b.unsqueeze(-2)).mean(-1) + a


def _outer_by_multiply(a, b):  # the same function: an elementwise product, computed at once
    return (a.unsqueeze(-1) * b.unsqueeze(-2)).mean(-1) + a


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
def test_deferred_copies_equal_the_uniform_rule_computed_at_once(mode: str) -> None:
    """An outer product as ``matmul`` (deferred) and as ``*`` (the elementwise rule at once)."""
    model, x, mask = random_case(lambda: TwoBranches(_outer_by_matmul, _outer_by_matmul))
    reference = TwoBranches(_outer_by_multiply, _outer_by_multiply).double().eval()
    reference.load_state_dict(model.state_dict())
    expected = feature_scores(reference, x, mask, 1, mode).scores
    torch.testing.assert_close(
        feature_scores(model, x, mask, 1, mode).scores, expected, rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("mode", ["proportional", "none"])
def test_a_product_of_two_signals_gives_half_to_each_factor_by_hand(mode: str) -> None:
    """Without biases every copy of ``a`` and ``b`` is the branch of the masked image."""
    model, x, mask = _case("a @ b (the output)", bias=False)
    with torch.no_grad():
        a0, b0 = model.a(x), model.b(x)
        expected = []
        for feature in mask.unique():
            part = x * (mask == feature)
            product = (model.a(part) @ b0 + a0 @ model.b(part)) / 2
            expected.append(model.head(product.mean((2, 3)))[:, 1])
    scores = feature_scores(model, x, mask, 1, mode)
    torch.testing.assert_close(scores.scores, torch.stack(expected, 1), rtol=1e-10, atol=1e-12)


class _Attention(nn.Module):
    """Attention written out, with a decomposed relative position term ``q @ R^T`` (SAM's ViT)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 2, 2)
        self.qkv = nn.Linear(8, 24)
        self.relative = nn.Parameter(torch.randn(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, 16, 8)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        scores = q @ k.transpose(-1, -2) * 8**-0.5
        scores = scores + q @ self.relative.T
        attended = scores.softmax(-1) @ v
        return self.head((attended + tokens).mean(1))


def test_attention_scores_never_compute_copies(monkeypatch) -> None:
    computed = []
    uniform = attention.uniform_product
    monkeypatch.setattr(
        attention, "uniform_product", lambda *args: computed.append(1) or uniform(*args)
    )
    model, x, mask = random_case(_Attention, scale=0.3)
    assert_proportional_adds_up(model, x, mask, 1, rtol=1e-10, atol=1e-10)
    assert computed == []
    model, x, mask = _case("linear attention")  # the counter counts
    assert_proportional_adds_up(model, x, mask, 1, rtol=1e-10, atol=1e-10)
    assert len(computed) == 2


def _written_through_a_view(a, b):
    scores = a @ b
    scores[..., :1].mul_(2.0)
    return scores + a


def _operand_written_afterwards(a, b):
    kept = a.clone()
    scores = a @ b + kept
    kept.mul_(2.0)
    return scores


@pytest.mark.parametrize(
    "operation, message",
    [
        (
            _written_through_a_view,
            r"torch\.Tensor\.matmul.*written in place through a view before its copies were "
            r"needed",
        ),
        (
            _operand_written_afterwards,
            r"torch\.Tensor\.add.*an operand it read was written in place afterwards",
        ),
    ],
)
def test_what_would_make_the_copies_wrong_is_refused(operation, message: str) -> None:
    model, x, mask = random_case(lambda: TwoBranches(operation, operation))
    assert_refused(model, message, x=x, mask=mask, target=1, modes=("proportional", "none"))
