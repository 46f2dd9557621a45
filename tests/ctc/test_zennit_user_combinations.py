"""What a Zennit user tries with CTCComposite and CTCAttributor (audit of user combinations).

Each test is a defect found by trying Zennit idioms against both Zennit versions (0.5.1 installed,
1.0.0 with ``PYTHONPATH=.zennit1``): the model must be the model's own after a registration,
modules called by keyword must run, ``attr_output`` must be shaped like the output, and a
refusal must say what to do.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat, MixedComposite
from zennit.rules import Epsilon

from ctc_plugin.ctc.attribution import CTC
from ctc_plugin.ctc.attributor import CTCAttributor
from ctc_plugin.ctc.composite import CTCComposite
from ctc_plugin.ctc.errors import CompositeOutsideAttributorError, UnsupportedOperationError
from ctc_plugin.ctc.within import distribute_within_features
from ctc_plugin.features.relevance import zennit_relevance
from ctc_plugin.inputs import TrainingModeError
from ctc_plugin.relevance import run_composite
from tests.ctc.test_composite import (
    FailingCanonizer,
    grid_mask,
    hook_counts,
    module_net,
    version_of_imported_zennit,
)

TOL = {"rtol": 1e-9, "atol": 1e-12}


def own_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The registered parameters and buffers of ``model`` by name (the objects themselves)."""
    return dict([*model.named_parameters(), *model.named_buffers()])


def assert_the_model_s_own(model: nn.Module, tensors: dict, x: torch.Tensor, before) -> None:
    """No hooks, the same tensor objects registered, none shadowed, the same output."""
    assert hook_counts(model) == 0
    after = own_tensors(model)
    assert after.keys() == tensors.keys()  # zennit 1.0 registers a zero bias on bias-free layers
    assert all(after[name] is tensor for name, tensor in tensors.items())
    shadowed = [
        (name, key)
        for name, module in model.named_modules()
        for key in (*module._parameters, *module._buffers)
        if key in module.__dict__
    ]
    assert not shadowed
    assert torch.equal(model(x), before)


def _context(composite: CTCComposite, model: nn.Module, x: torch.Tensor) -> None:
    with composite.context(model) as modified:
        modified(x)


def _context_raising(composite: CTCComposite, model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(KeyError):
        with composite.context(model) as modified:
            modified(x)
            raise KeyError("the user's code fails inside the block")


def _register_remove(composite: CTCComposite, model: nn.Module, x: torch.Tensor) -> None:
    composite.register(model)
    model(x)
    composite.remove()


def _zennit_gradient(composite: CTCComposite, model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(CompositeOutsideAttributorError):
        Gradient(model, composite)(x, torch.eye(3, dtype=x.dtype)[[0, 1]])


REGISTRATIONS = {
    "context": _context,
    "context-raising": _context_raising,
    "register-remove": _register_remove,
    "zennit-Gradient": _zennit_gradient,
}


# ---------------------------------------------------------------------------- registration
@pytest.mark.parametrize("use", sorted(REGISTRATIONS))
def test_a_registration_with_a_merging_canonizer_leaves_the_model_s_own_tensors(use: str) -> None:
    """zennit 1.0's merge leaves shadowing attributes and a registered zero bias on ``remove``.

    ``state_dict()`` then has keys the model never had (``load_state_dict`` of a fresh model
    fails), and ``parameters()`` an extra one; CTCComposite puts the model's own tensors back.
    """
    model = module_net()  # its second convolution has no bias
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    before, tensors = model(x), own_tensors(model)
    composite = CTCComposite(canonizers=[SequentialMergeBatchNorm()])
    REGISTRATIONS[use](composite, model, x)
    assert not composite.handles
    assert_the_model_s_own(model, tensors, x, before)


def test_a_context_whose_canonizer_fails_leaves_nothing_on_the_model() -> None:
    """Zennit's ``context`` never reaches ``__exit__`` when ``register`` raises."""
    model = module_net()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    before, tensors = model(x), own_tensors(model)
    composite = CTCComposite(canonizers=[SequentialMergeBatchNorm(), FailingCanonizer()])
    with pytest.raises(RuntimeError, match="canonizer failed"):
        with composite.context(model):
            pass
    assert not composite.handles
    assert_the_model_s_own(model, tensors, x, before)


# ---------------------------------------------------------------------------- keyword calls
class KeywordCalls(nn.Module):
    """Calls its layers by keyword (``self.fc(input=x)``), as generated or traced code does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4 * 64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(input=self.conv(input=x))
        return self.fc(input=hidden.flatten(1))


def test_modules_called_by_keyword_run_inside_the_context_and_the_attributor() -> None:
    """zennit 0.5.1's pre-hook indexes the positional inputs: an IndexError without the fix."""
    torch.manual_seed(0)
    model = KeywordCalls().double().eval()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    mask = grid_mask(8, 2)
    before = model(x)
    with CTCComposite().context(model) as modified:
        assert torch.equal(modified(x), before)
    expected = CTC(model).attribute(x, [2, 0, 1], feature_mask=mask)
    _, relevance = CTCAttributor(model, feature_mask=mask)(
        x, torch.eye(3, dtype=x.dtype)[[2, 0, 1]]
    )
    torch.testing.assert_close(relevance, expected, **TOL)
    assert hook_counts(model) == 0


@pytest.mark.parametrize("idiom", ["Gradient", "context-backward"])
def test_a_gradient_through_modules_called_by_keyword_is_refused(idiom: str) -> None:
    """Zennit hooks a module's inputs only when they are positional: the refusal came from there.

    Without a positional input Zennit's pre-hook registers nothing, so a gradient through a model
    that calls every layer by keyword returned the plain gradient silently (both versions).
    """
    torch.manual_seed(0)
    model = KeywordCalls().double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    before, tensors = model(x), own_tensors(model)
    composite = CTCComposite()
    with pytest.raises(CompositeOutsideAttributorError, match=r"CTCAttributor\(model, composite"):
        if idiom == "Gradient":
            Gradient(model, composite)(x, torch.eye(3, dtype=x.dtype)[[0, 1]])
        else:
            with composite.context(model) as modified:
                modified(x).sum().backward()
    assert_the_model_s_own(model, tensors, x, before)


# ---------------------------------------------------------------------------- attr_output
@pytest.mark.parametrize(
    ("examples", "attr_output"),
    [
        (1, torch.tensor([2])),  # class indices, Captum style: all classes weighted by 2
        (3, torch.tensor([2, 0, 1])),  # N == C: each index weights a class for every example
        (3, torch.tensor([[2], [0], [1]])),  # a column of indices broadcast over the classes
    ],
)
def test_class_indices_as_attr_output_are_refused(examples: int, attr_output) -> None:
    """Zennit refuses an ``attr_output`` not shaped like the output; broadcasting hid indices."""
    attributor = CTCAttributor(module_net(), feature_mask=grid_mask(8, 2))
    x = torch.rand(examples, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shaped like the output.*target="):
        attributor(x, attr_output)


def test_one_row_of_attr_output_still_serves_every_example() -> None:
    model = module_net()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    mask = grid_mask(8, 2)
    _, relevance = CTCAttributor(model, feature_mask=mask)(x, torch.eye(3, dtype=x.dtype)[[1]])
    torch.testing.assert_close(relevance, CTC(model).attribute(x, 1, feature_mask=mask), **TOL)


# ---------------------------------------------------------------------------- messages
def _batch_statistics_model() -> nn.Module:
    """A BatchNorm without running statistics, in a model in eval mode (float64)."""
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(3, 3, 3, padding=1),
            nn.BatchNorm2d(3, track_running_stats=False),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3 * 64, 3),
        )
        .double()
        .eval()
    )


def test_a_batch_norm_without_running_statistics_is_refused_with_what_to_do() -> None:
    """The model is in eval mode already: "call model.eval() first" does not help."""
    model = _batch_statistics_model()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    attributor = CTCAttributor(model, feature_mask=grid_mask(8, 2))
    with pytest.raises(UnsupportedOperationError, match="track_running_stats") as error:
        attributor(x, torch.eye(3, dtype=x.dtype)[[0, 1]])
    assert "model.eval()" not in str(error.value)
    assert hook_counts(model) == 0


def test_the_zennit_route_names_the_batch_norm_as_ctc_s_route_does() -> None:
    """CTCAttributor said "through BatchNorm2d", without the module's path."""
    model = _batch_statistics_model()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(UnsupportedOperationError) as zennit:
        CTCAttributor(model, feature_mask=grid_mask(8, 2))(x, torch.eye(3, dtype=x.dtype)[[0, 1]])
    with pytest.raises(UnsupportedOperationError) as captum:
        CTC(model).attribute(x, target=0, feature_mask=grid_mask(8, 2))
    assert zennit.value.module == "1 (BatchNorm2d)" == captum.value.module
    assert zennit.value.headline == captum.value.headline
    assert hook_counts(model) == 0


# ---------------------------------------------------------------------------- relevance
@pytest.mark.parametrize("kind", ["CTCComposite", "MixedComposite"])
@pytest.mark.parametrize("where", ["distribute_within_features", "zennit_relevance"])
def test_a_ctc_composite_as_the_relevance_is_refused_naming_a_zennit_one(kind, where) -> None:
    """A relevance composite needs gradient rules, which the CTC composite does not have.

    Before, Zennit's ``Gradient`` ran it and the CTC rules' gradient refusal told the user to use
    ``CTCAttributor``, which they had just used for the scores.
    """
    model = module_net()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = grid_mask(8, 2)
    attributor = CTCAttributor(model, feature_mask=mask)
    attributor(x, torch.eye(3, dtype=x.dtype)[[0, 1]])
    ctc = CTCComposite()
    composite = ctc if kind == "CTCComposite" else MixedComposite([ctc, EpsilonPlusFlat()])
    with pytest.raises(ValueError, match=r"no relevance of its own.*EpsilonPlusFlat"):
        if where == "distribute_within_features":
            distribute_within_features(x, attributor.feature_scores, composite, model=model)
        else:
            zennit_relevance(model, x, target=[0, 1], composite=composite)
    assert hook_counts(model) == 0


# ---------------------------------------------------------------------------- Zennit rules beside
@pytest.mark.parametrize("functional", ["intercept", "raise"])
@pytest.mark.parametrize("placement", ["layer_map", "MixedComposite first"])
def test_zennit_rules_beside_the_ctc_rules_do_not_change_the_ctc_pass(placement, functional):
    """As documented on CTCComposite: the guard computes what a Zennit rule took, or refuses."""
    model = module_net()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    mask = grid_mask(8, 2)
    if placement == "layer_map":
        composite = CTCComposite(layer_map=[((nn.Linear,), Epsilon())])
    else:
        composite = MixedComposite([EpsilonPlusFlat(), CTCComposite()])
    attributor = CTCAttributor(model, composite, feature_mask=mask, functional=functional)
    one_hot = torch.eye(3, dtype=x.dtype)[[2, 0, 1]]
    if functional == "raise":
        # a layer of a Zennit rule, which does not act in a CTC pass: named with its module
        # (EpsilonPlusFlat's Flat takes the first convolution, the layer map's Epsilon Linears)
        with pytest.raises(UnsupportedOperationError, match=r"in \d+ \(.*\).*the Zennit rule"):
            attributor(x, one_hot)
    else:
        _, relevance = attributor(x, one_hot)
        expected = CTC(model).attribute(x, [2, 0, 1], feature_mask=mask)
        torch.testing.assert_close(relevance, expected, **TOL)
    assert hook_counts(model) == 0


def test_the_captum_side_refuses_a_batch_norm_without_running_statistics_saying_what_to_do():
    """The model is in eval mode: "call model.eval() first" would not help; the refusal says
    what does, as the composite's does (one message: ``handlers.refuse_batch_statistics``)."""
    model = _batch_statistics_model()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(UnsupportedOperationError, match="track_running_stats") as error:
        CTC(model).attribute(x, [0, 1], feature_mask=grid_mask(8, 2))
    assert "model.eval()" not in str(error.value)


# changes the user makes inside composite.context(model) stay after it (the composite puts back
# only what its registration changed)
def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def test_a_dtype_change_inside_the_context_stays_whole() -> None:
    model = _bn_model()
    with CTCComposite().context(model):
        model.double()
    dtypes = {name: t.dtype for name, t in [*model.named_parameters(), *model.named_buffers()]}
    floating = {name: dtype for name, dtype in dtypes.items() if dtype.is_floating_point}
    assert set(floating.values()) == {torch.float64}, floating
    model(torch.rand(1, 3, 8, 8, dtype=torch.float64))  # runs


def test_a_parameter_assigned_inside_the_context_stays() -> None:
    model = _bn_model()
    new = nn.Parameter(torch.zeros(3, 4))
    with CTCComposite().context(model):
        model[5].weight = new
    assert model[5].weight is new


# zennit 0.5.1's merge writes into the parameters' data, and its removal writes the float32 data
# back whatever happened in between (the same in Zennit's own context): 1.0's merge only
MERGES = [None] + (
    [SequentialMergeBatchNorm] if version_of_imported_zennit().startswith("1.") else []
)


@pytest.mark.parametrize("merge", MERGES, ids=lambda merge: "merge" if merge else "rules")
def test_the_user_s_changes_inside_an_attributor_block_stay(merge) -> None:
    """The attributor's ``with`` put back every tensor recorded on entry: ``model.double()``
    inside the block left float32 buffers beside float64 parameters (the model failed on any
    input after the block), and a parameter assigned there was dropped, unlike the composite's
    own ``context`` (above)."""
    model = _bn_model()
    new = nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))
    composite = CTCComposite(canonizers=[merge()] if merge else None)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    with CTCAttributor(model, composite, feature_mask=mask):
        model.double()
        model[5].weight = new
    floating = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
    assert floating == {torch.float64}
    assert model[5].weight is new
    assert model(torch.rand(1, 3, 8, 8, dtype=torch.float64)).dtype == torch.float64
    assert hook_counts(model) == 0


# ---------------------------------------------------------------------------- run_composite
def test_run_composite_refuses_a_model_in_training_mode_and_leaves_its_statistics() -> None:
    """``run_composite`` (public, on the CTC reference page) ran a model in training mode: the
    pass moved every BatchNorm's running statistics and the relevance came from the batch's
    statistics, silently. The other relevance entry points refuse it; so does this one."""
    model = module_net().train()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    with pytest.raises(TrainingModeError, match=r"BatchNorm2d '1' is in training mode"):
        run_composite(model, composite, x, torch.eye(3, dtype=x.dtype)[[0, 1]])
    assert all(torch.equal(value, state[name]) for name, value in model.state_dict().items())
    assert model.training and hook_counts(model) == 0


def _in_a_ctc_block(model, x, relevance):
    with CTCAttributor(model, CTCComposite(), feature_mask=grid_mask(8, 2)) as attributor:
        attributor(x)
        relevance()


def _in_an_lrp_context(model, x, relevance):
    with EpsilonGammaBox(low=0.0, high=1.0).context(model):  # other rules than the call's
        relevance()


@pytest.mark.parametrize("outer", [_in_a_ctc_block, _in_an_lrp_context])
@pytest.mark.parametrize("canonizers", [False, True])
def test_a_relevance_call_inside_another_composites_block_is_refused(outer, canonizers) -> None:
    """A relevance composite was registered on top of the one open on the model: inside an LRP
    composite's context the two rule sets mixed into another relevance, silently; inside a CTC
    block the gradient met the CTC rules (advice to use the CTCAttributor in use) or, with
    canonizers, Zennit's second canonizer failed (``'Sequential' object has no attribute``)."""
    model = module_net()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    before, tensors = model(x), own_tensors(model)
    composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()] if canonizers else None)

    def relevance():
        with pytest.raises(RuntimeError, match="registered on this model already.*end that"):
            zennit_relevance(model, x, target=[0, 1], composite=composite)

    outer(model, x, relevance)
    assert not composite.handles
    assert_the_model_s_own(model, tensors, x, before)


# ---------------------------------------------------------------------------- feature_scores
def test_the_scores_of_a_negated_one_hot_name_its_class_as_their_target() -> None:
    """``-one_hot`` (the evidence against a class) scored that class, negated, but the scores'
    target was the argmax of the weights, a class weighted 0 (class 0 here): a relevance for
    ``distribute_within_features`` was then computed for that other class, silently."""
    model = module_net()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = grid_mask(8, 2)
    attributor = CTCAttributor(model, CTCComposite(bias_sharing="none"), feature_mask=mask)
    attributor(x, -torch.eye(3, dtype=x.dtype)[[2, 1]])
    scores = attributor.feature_scores
    _, expected = CTC(model, bias_sharing="none").attribute(
        x, [2, 1], feature_mask=mask, return_feature_scores=True
    )
    torch.testing.assert_close(scores.scores, -expected.scores, **TOL)
    assert scores.target.tolist() == [2, 1]
    lrp = EpsilonPlusFlat()
    pixels = distribute_within_features(x, scores, lrp, model=model)
    against = distribute_within_features(x, expected, lrp, model=model)
    torch.testing.assert_close(pixels, -against, **TOL)
