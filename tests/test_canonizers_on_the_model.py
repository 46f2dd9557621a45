"""Canonizers and registrations seen on the model: merges and attributes set twice, removals
that raise, and a composite's registration inside the user's own ``with`` block."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zennit.canonizers import (
    AttributeCanonizer,
    Canonizer,
    NamedMergeBatchNorm,
    SequentialMergeBatchNorm,
)
from zennit.composites import EpsilonPlusFlat, MixedComposite

from ctc_plugin import CTCAttributor, CTCComposite
from ctc_plugin.canonizers import check_canonizers
from ctc_plugin.ctc.errors import CompositeOutsideAttributorError
from ctc_plugin.features.relevance import zennit_relevance


def small_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def hooks_on(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


X = torch.rand(1, 3, 16, 16)
MASK = torch.arange(16).view(1, 1, 4, 4).repeat_interleave(4, 2).repeat_interleave(4, 3)
ONE_HOT = torch.eye(5)[[0]]


def relu_forward(name: str, module: nn.Module) -> dict | None:
    if isinstance(module, nn.ReLU):
        return {"forward": (lambda self, t: torch.relu(t)).__get__(module)}
    return None


@pytest.mark.parametrize(
    "composite",
    [
        lambda: MixedComposite(
            [
                CTCComposite(canonizers=[NamedMergeBatchNorm([(["0"], "1")])]),
                EpsilonPlusFlat(canonizers=[NamedMergeBatchNorm([(["0"], "1")])]),
            ]
        ),
        lambda: CTCComposite(
            canonizers=[NamedMergeBatchNorm([(["0"], "1")]), SequentialMergeBatchNorm()]
        ),
    ],
    ids=["named-twice", "named-and-sequential"],
)
def test_one_batch_norm_merged_by_two_canonizers_is_refused_before_the_model_changes(composite):
    """Both merged the BatchNorm, the call succeeded, and Zennit's removal left the model
    merged (zennit 0.5: rescaled weights; 1.0: eps 0, which fails in training mode)."""
    model = small_model()
    state = state_of(model)
    with pytest.raises(ValueError, match="merge BatchNorm '1' twice"):
        CTCAttributor(model, composite(), feature_mask=MASK)(X, ONE_HOT)
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert model[1].eps == 1e-5
    assert hooks_on(model) == 0


def test_canonizers_on_other_modules_of_the_model_are_accepted():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.BatchNorm2d(4),
    )
    composite = CTCComposite(
        canonizers=[NamedMergeBatchNorm([(["3"], "5")]), SequentialMergeBatchNorm()]
    )
    check_canonizers(composite, model)  # the sequential merge takes "1" only


def test_two_attribute_canonizers_setting_one_forward_are_refused():
    """The second removal failed (the attribute was gone) and left every hook on the model."""
    model = small_model()
    composite = CTCComposite(
        canonizers=[AttributeCanonizer(relu_forward), AttributeCanonizer(relu_forward)]
    )
    with pytest.raises(ValueError, match="set 'forward' of module '2' twice"):
        CTCAttributor(model, composite, feature_mask=MASK)(X, ONE_HOT)
    assert hooks_on(model) == 0
    assert "forward" not in vars(model[2])


class FailsOnRemoval(Canonizer):
    """A canonizer whose removal raises."""

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        return [self]

    def register(self) -> None:
        pass

    def remove(self) -> None:
        raise RuntimeError("removal failed")


@pytest.mark.parametrize("how", ["call", "with", "context"])
def test_a_canonizer_whose_removal_raises_leaves_no_hook_behind(how):
    """Zennit's removal stopped at the failing canonizer and left eight hooks on the model: every
    later gradient raised CompositeOutsideAttributorError and every CTC call was refused."""
    model = small_model()
    composite = CTCComposite(canonizers=[FailsOnRemoval()])
    with pytest.raises(RuntimeError, match="removal failed"):
        if how == "call":
            CTCAttributor(model, composite, feature_mask=MASK)(X, ONE_HOT)
        elif how == "with":
            with CTCAttributor(model, composite, feature_mask=MASK) as attributor:
                attributor(X, ONE_HOT)
        else:
            with composite.context(model):
                pass
    assert hooks_on(model) == 0
    assert not composite.handles
    x = X.clone().requires_grad_()
    model(x).sum().backward()  # a plain gradient again
    CTCAttributor(model, CTCComposite(), feature_mask=MASK)(X, ONE_HOT)


def test_relevance_inside_the_users_own_block_keeps_that_registration():
    """zennit_relevance removed the user's registration: the rest of the block computed the
    plain gradient. Zennit's own attributors use the registration and leave it."""
    model = small_model()
    composite = EpsilonPlusFlat()
    expected = zennit_relevance(model, X, target=1, composite=composite)
    with composite.context(model) as modified:
        hooks = hooks_on(model)
        relevance = zennit_relevance(model, X, target=1, composite=composite)
        assert hooks_on(model) == hooks
        x = X.clone().requires_grad_()
        (lrp,) = torch.autograd.grad(modified(x), x, torch.eye(5)[[1]])
    torch.testing.assert_close(relevance, expected)
    torch.testing.assert_close(lrp.sum(1), expected)
    assert hooks_on(model) == 0


@pytest.mark.parametrize("inner", ["context", "attributor"])
def test_a_block_of_the_same_composite_inside_another_leaves_the_outer_registered(inner):
    """The inner block's end removed the outer's hooks: a gradient there was no longer refused
    (the plain gradient, silently) and the model no longer canonized."""
    model = small_model()
    composite = CTCComposite(canonizers=[SequentialMergeBatchNorm()])
    with composite.context(model) as modified:
        hooks = hooks_on(model)
        if inner == "context":
            with composite.context(model):
                pass
        else:
            with CTCAttributor(model, composite, feature_mask=MASK) as attributor:
                attributor(X, ONE_HOT)
        assert hooks_on(model) == hooks
        x = X.clone().requires_grad_()
        with pytest.raises(CompositeOutsideAttributorError):
            modified(x).backward(ONE_HOT)
    assert hooks_on(model) == 0


def test_an_attributor_block_inside_the_same_attributor_block_keeps_it_registered():
    model = small_model()
    attributor = CTCAttributor(model, CTCComposite(), feature_mask=MASK)
    with attributor:
        with attributor:
            first = attributor(X, ONE_HOT)
        assert hooks_on(model) > 0
        second = attributor(X, ONE_HOT)
    assert hooks_on(model) == 0
    torch.testing.assert_close(first, second)


def test_a_composite_registered_on_another_model_is_refused_by_name():
    """CTCAttributor(m2, composite) saw the composite's handles (registered on m1) and neither
    registered nor canonized m2; a relevance call took the registration off m1."""
    first, second = small_model(), small_model()
    composite = CTCComposite(canonizers=[SequentialMergeBatchNorm()])
    lrp = EpsilonPlusFlat()
    with composite.context(first), lrp.context(first):
        hooks = hooks_on(first)
        with pytest.raises(RuntimeError, match="registered on another model"):
            CTCAttributor(second, composite, feature_mask=MASK)(X, ONE_HOT)
        with pytest.raises(RuntimeError, match="registered on another model"):
            with CTCAttributor(second, composite, feature_mask=MASK):
                pass
        with pytest.raises(RuntimeError, match="registered on another model"):
            zennit_relevance(second, X, target=1, composite=lrp)
        assert hooks_on(first) == hooks
        assert hooks_on(second) == 0


def test_the_context_is_zennit_s_composite_context_and_can_be_used_again():
    """It had become a generator's context manager: a second `with` of it failed."""
    from zennit.core import CompositeContext

    model = small_model()
    composite = CTCComposite()
    context = composite.context(model)
    assert isinstance(context, CompositeContext)
    for _ in range(2):
        with context as modified:
            assert modified is model and hooks_on(model) > 0
        assert hooks_on(model) == 0


def test_a_composite_of_canonizers_alone_registered_on_another_model_is_refused():
    """It counted as registered on every model: the relevance ran on the second model without
    its canonizer."""
    from zennit.core import Composite

    first, second = small_model(), small_model()
    composite = Composite(canonizers=[SequentialMergeBatchNorm()])
    with composite.context(first):
        with pytest.raises(RuntimeError, match="registered on another model"):
            zennit_relevance(second, X, target=1, composite=composite)


def test_one_named_merge_naming_a_batch_norm_twice_is_refused_as_one():
    model = small_model()
    composite = CTCComposite(canonizers=[NamedMergeBatchNorm([(["0"], "1"), (["5"], "1")])])
    with pytest.raises(ValueError, match="from one NamedMergeBatchNorm given twice or naming"):
        check_canonizers(composite, model)
