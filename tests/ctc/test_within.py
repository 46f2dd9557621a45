"""Pixel-level CTC: each feature's score split over its elements by relevance magnitude.

[`distribute_within_features`][ctc_plugin.distribute_within_features] runs after
``CTC.attribute`` (or a ``CTCAttributor`` call) on the scores it returned. Every relevance form
(tensor, Zennit composite, Captum method, callable) is checked against an oracle written here in
plain torch from a relevance computed independently (Zennit's or Captum's own calls).
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, Saliency
from hypothesis import given, settings
from hypothesis import strategies as st
from zennit.attribution import Gradient
from zennit.composites import EpsilonAlpha2Beta1, EpsilonPlusFlat

from ctc_plugin import CTC, CTCAttributor, CTCComposite, distribute_within_features
from ctc_plugin.ctc.masks import prepare_features
from ctc_plugin.ctc.within import spread_by_relevance
from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition

from .test_composite import module_net


def per_feature_sums(
    attribution: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """(N, K) sums of an attribution over each feature's elements (plain torch)."""
    mask = mask.expand(attribution.shape)
    return torch.stack(
        [
            torch.stack([(attribution[n] * (mask[n] == i)).sum() for i in ids.tolist()])
            for n in range(attribution.shape[0])
        ]
    )


def oracle(scores, mask: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """``score_S * |R_i| / sum_S |R_j|`` element by element (evenly where R is 0 on S)."""
    out = torch.zeros_like(relevance)
    mask = mask.expand(relevance.shape)
    for n in range(relevance.shape[0]):
        for k, i in enumerate(scores.ids.tolist()):
            region = mask[n] == i
            if not region.any():
                continue
            magnitude = relevance[n].abs() * region
            total = magnitude.sum()
            share = magnitude / total if total > 0 else region / region.sum()
            out[n] += scores.scores[n, k] * share
    return out


def case(seed: int, batch: int = 2, features: int = 5):
    model = module_net(seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 8, 8, generator=generator, dtype=torch.float64)
    mask = random_partition(8, 8, features, seed=seed, batch=batch)
    return model, x, mask


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 1000),
    batch=st.integers(1, 3),
    features=st.integers(1, 6),
    per_example=st.booleans(),
    zero_features=st.integers(0, 2),
)
def test_per_feature_sums_equal_scores(seed, batch, features, per_example, zero_features) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 6, 6, generator=generator, dtype=torch.float64)
    mask = random_partition(6, 6, features, seed=seed, batch=batch if per_example else 1)
    feature_set = prepare_features((x,), mask)
    scores = torch.randn(batch, feature_set.count, generator=generator, dtype=torch.float64)
    scores = scores * feature_set.presence
    relevance = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    for i in feature_set.ids[:zero_features].tolist():  # features the relevance does not reach
        relevance = relevance.masked_fill(mask.expand(x.shape) == i, 0.0)
    (attribution,) = spread_by_relevance(scores, feature_set, (x,), (relevance,))
    sums = per_feature_sums(attribution, mask, feature_set.ids)
    torch.testing.assert_close(sums, scores)
    # the sign of the map is the sign of the feature's score (weights are |relevance| shares)
    spread = scores.gather(
        1, torch.searchsorted(feature_set.ids, mask.expand(x.shape).reshape(batch, -1).contiguous())
    )
    assert bool((attribution.reshape(batch, -1) * spread >= 0).all())


@pytest.mark.parametrize("mode", ["reference", "proportional", "none"])
@pytest.mark.parametrize("target", [None, 1, [2, 0]])
@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_every_relevance_form_matches_the_oracle(mode, target) -> None:
    for seed in range(2):
        model, x, mask = case(seed)
        _, scores = CTC(model, bias_sharing=mode).attribute(
            x, target, feature_mask=mask, return_feature_scores=True
        )
        classes = scores.target
        one_hot = torch.eye(3, dtype=torch.float64)[classes]
        relevance = {
            "tensor": torch.randn(x.shape, dtype=torch.float64),
            "composite": Gradient(model, EpsilonPlusFlat())(x, one_hot)[1],
            "other composite": Gradient(model, EpsilonAlpha2Beta1())(x, one_hot)[1],
            "captum": InputXGradient(model).attribute(x.clone(), target=classes).detach(),
            "callable": (x * classes.view(-1, 1, 1, 1)) ** 2,
        }
        forms = {
            "tensor": relevance["tensor"],
            "composite": EpsilonPlusFlat(),
            "other composite": EpsilonAlpha2Beta1(),
            "captum": InputXGradient(model),
            "callable": lambda inputs, t: (inputs * t.view(-1, 1, 1, 1)) ** 2,
        }
        for name, form in forms.items():
            got = distribute_within_features(x, scores, form, model=model)
            expected = oracle(scores, mask, relevance[name])
            torch.testing.assert_close(got, expected, msg=f"{name}, seed {seed}")
            torch.testing.assert_close(per_feature_sums(got, mask, scores.ids), scores.scores)


def test_uniform_relevance_equals_plain_ctc_spread_evenly() -> None:
    model = RandomCNN(CNNSpec(), seed=3).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = random_partition(8, 8, 5, seed=3, batch=2)
    plain, scores = CTC(model, bias_sharing="proportional").attribute(
        x, 1, feature_mask=mask, return_feature_scores=True
    )
    within = distribute_within_features(x, scores, torch.ones_like(x))
    zero = distribute_within_features(x, scores, torch.zeros_like(x))  # the even fallback
    elements = torch.zeros_like(x)
    for n in range(2):
        for i in mask[n].unique().tolist():
            region = (mask[n] == i).expand(x.shape[1:])
            elements[n][region] = region.sum()
    torch.testing.assert_close(within, plain / elements)
    torch.testing.assert_close(zero, within)


@pytest.mark.parametrize("size", [1e37, 1e-40])
def test_relevance_of_any_finite_size_gives_the_same_spread(size) -> None:
    """Only the ratios count: relevance near float32's largest (a feature's sum overflowed to
    inf, and every element got 0) or smallest gives the spread of relevance of size 1."""
    model = RandomCNN(CNNSpec(), seed=3)
    x = torch.rand(2, 3, 8, 8)
    mask = random_partition(8, 8, 5, seed=3, batch=2)
    _, scores = CTC(model).attribute(x, 1, feature_mask=mask, return_feature_scores=True)
    relevance = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.5
    expected = distribute_within_features(x, scores, relevance)
    within = distribute_within_features(x, scores, relevance * size)
    torch.testing.assert_close(within, expected)


def test_the_segmenters_mask_travels_in_the_scores() -> None:
    model = RandomCNN(CNNSpec(), seed=8).double()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    _, scores = CTC(model).attribute(x, 0, return_feature_scores=True)  # no mask: superpixels
    relevance = torch.rand_like(x)
    got = distribute_within_features(x, scores, relevance)
    (mask,) = scores.feature_mask
    torch.testing.assert_close(got, oracle(scores, mask, relevance))


def test_tuple_inputs_share_a_feature_across_inputs() -> None:
    x = (torch.rand(1, 2, 4, dtype=torch.float64), torch.rand(1, 3, dtype=torch.float64))
    masks = (torch.tensor([[[0, 0, 1, 1], [1, 2, 2, 2]]]), torch.tensor([[2, 0, 0]]))
    features = prepare_features(x, masks)
    scores = torch.tensor([[1.5, -2.0, 0.25]], dtype=torch.float64)
    relevance = (torch.randn(1, 2, 4, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64))
    out = spread_by_relevance(scores, features, x, relevance)
    for k, i in enumerate(features.ids.tolist()):
        total = sum((o * (m == i)).sum() for o, m in zip(out, masks))
        torch.testing.assert_close(total, scores[0, k])


def test_tuple_inputs_through_the_public_function() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(11, 3).double()

    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return linear(torch.cat([a.flatten(1), b], dim=1))

    x = (torch.rand(2, 2, 4, dtype=torch.float64), torch.rand(2, 3, dtype=torch.float64))
    masks = (torch.tensor([[[0, 0, 1, 1], [1, 2, 2, 2]]]), torch.tensor([[2, 0, 0]]))
    _, scores = CTC(forward, bias_sharing="proportional").attribute(
        x, 1, feature_mask=masks, return_feature_scores=True
    )
    relevance = tuple(torch.randn_like(t) for t in x)
    out = distribute_within_features(x, scores, relevance)
    assert isinstance(out, tuple) and [o.shape for o in out] == [t.shape for t in x]
    by_callable = distribute_within_features(x, scores, lambda inputs, target: relevance)
    for a, b in zip(out, by_callable):
        torch.testing.assert_close(a, b)
    for n in range(2):
        for k, i in enumerate(scores.ids.tolist()):
            total = sum((o[n] * (m[0] == i)).sum() for o, m in zip(out, masks))
            torch.testing.assert_close(total, scores.scores[n, k])
    with pytest.raises(ValueError, match="one input tensor, not a tuple of 2"):
        distribute_within_features(x, scores, EpsilonPlusFlat(), model=linear)


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_the_predicted_class_reaches_captum_methods_and_callables() -> None:
    model, x, mask = case(4)
    _, scores = CTC(model).attribute(x, None, feature_mask=mask, return_feature_scores=True)
    predicted = model(x).argmax(dim=1)
    assert torch.equal(scores.target, predicted)
    seen = []

    def relevance(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append(target)
        return Saliency(model).attribute(inputs, target=target)

    by_callable = distribute_within_features(x, scores, relevance)
    by_captum = distribute_within_features(x, scores, Saliency(model))
    assert torch.equal(seen[0], predicted)  # Captum's form: class indices
    torch.testing.assert_close(by_callable, by_captum)


class TwoHeads(torch.nn.Module):
    """A model with (N, 2, 3) outputs: two heads of three classes."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(), torch.nn.Linear(4, 6),
        ).double()  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1, 2, 3)


@pytest.mark.parametrize("target", [[(0, 1), (1, 2)], None], ids=["tuples", "predicted"])
def test_outputs_of_more_dimensions_reach_every_relevance_form_as_captum_targets(target) -> None:
    """Captum takes index tuples for (N, 2, 3) outputs; the flat indices it refuses."""
    model = TwoHeads(0).eval()
    _, x, mask = case(5)
    _, scores = CTC(model).attribute(x, target, feature_mask=mask, return_feature_scores=True)
    wanted = [(0, 1), (1, 2)] if target is None else target
    if target is None:  # the predicted outputs, as Captum's tuples
        flat = model(x).flatten(1).argmax(1)
        wanted = [(int(i) // 3, int(i) % 3) for i in flat]
    assert scores.captum_target == wanted and scores.output_shape == (2, 3)
    expected = oracle(scores, mask, InputXGradient(model).attribute(x, target=wanted))
    torch.testing.assert_close(
        distribute_within_features(x, scores, InputXGradient(model)), expected
    )
    seen = []

    def relevance(inputs: torch.Tensor, given: list) -> torch.Tensor:
        seen.append(given)
        return InputXGradient(model).attribute(inputs, target=given)

    torch.testing.assert_close(distribute_within_features(x, scores, relevance), expected)
    assert seen == [wanted]
    with Gradient(model, EpsilonPlusFlat()) as attributor:
        heads = torch.zeros(2, 2, 3, dtype=torch.float64)
        for n, (head, cls) in enumerate(wanted):
            heads[n, head, cls] = 1.0
        _, zennit = attributor(x, heads)
    by_zennit = distribute_within_features(x, scores, EpsilonPlusFlat(), model=model)
    torch.testing.assert_close(by_zennit, oracle(scores, mask, zennit))


def test_attributor_scores_feed_the_same_function() -> None:
    model, x, mask = case(6, batch=1, features=4)
    _, scores = CTC(model, bias_sharing="proportional").attribute(
        x, 1, feature_mask=mask, return_feature_scores=True
    )
    pixel = distribute_within_features(x, scores, EpsilonPlusFlat(), model=model)
    attributor = CTCAttributor(model, CTCComposite(bias_sharing="proportional"), feature_mask=mask)
    _, relevance = attributor(x, torch.eye(3, dtype=torch.float64)[[1]])
    assert int(attributor.feature_scores.target) == 1
    from_attributor = distribute_within_features(
        x, attributor.feature_scores, EpsilonPlusFlat(), model=model
    )
    torch.testing.assert_close(from_attributor, pixel)
    torch.testing.assert_close(per_feature_sums(pixel, mask, scores.ids), scores.scores)
    assert not pixel.eq(pixel.flatten()[0]).all()  # the map has detail within features


def test_bad_arguments_are_refused_with_what_to_do() -> None:
    model, x, mask = case(7, batch=1, features=2)
    _, scores = CTC(model, bias_sharing="none").attribute(
        x, 0, feature_mask=mask, return_feature_scores=True
    )
    with pytest.raises(ValueError, match="does not broadcast"):
        distribute_within_features(x, scores, torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        distribute_within_features(x, scores, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="2 relevance tensors for 1 inputs"):
        distribute_within_features(x, scores, (x, x))
    with pytest.raises(TypeError, match="a relevance must be a tensor"):
        distribute_within_features(x, scores, "lrp")
    with pytest.raises(ValueError, match="pass model=<torch.nn.Module>"):
        distribute_within_features(x, scores, EpsilonPlusFlat())
    with pytest.raises(TypeError, match="FeatureScores of a CTC call"):
        distribute_within_features(x, scores.scores, torch.ones_like(x))
    with pytest.raises(ValueError, match="these scores belong to other inputs"):
        distribute_within_features(torch.rand(2, 3, 8, 8, dtype=x.dtype), scores, x)
    with pytest.raises(ValueError, match="these scores belong to other inputs"):
        distribute_within_features(torch.rand(1, 3, 6, 6, dtype=x.dtype), scores, x)


def test_attribute_no_longer_takes_within_feature() -> None:
    model, x, mask = case(8, batch=1)
    with pytest.raises(TypeError, match="within_feature"):
        CTC(model).attribute(x, 0, feature_mask=mask, within_feature=torch.ones_like(x))


def test_a_failing_composite_leaves_the_model_as_it_was() -> None:
    model, x, mask = case(9, batch=1)
    _, scores = CTC(model).attribute(x, 0, feature_mask=mask, return_feature_scores=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = {k: v for k, v in [*model.named_parameters(), *model.named_buffers()]}

    class Failing(EpsilonPlusFlat):
        def register(self, module):  # registers, then fails like a broken rule would
            super().register(module)
            raise RuntimeError("broken composite")

    with pytest.raises(RuntimeError, match="broken composite"):
        distribute_within_features(x, scores, Failing(), model=model)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks
    for name, value in [*model.named_parameters(), *model.named_buffers()]:
        assert value is tensors[name]
        assert torch.equal(value, state[name])
    again = distribute_within_features(x, scores, EpsilonPlusFlat(), model=model)
    assert torch.isfinite(again).all()


def test_a_model_of_one_value_per_example_gives_captum_no_target() -> None:
    """Captum takes only ``target=None`` for (N,) outputs; a tensor of zeros fails there."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(2, 1), torch.nn.Flatten(0),
    ).double()  # fmt: skip
    _, x, mask = case(6)
    _, scores = CTC(net).attribute(x, None, feature_mask=mask, return_feature_scores=True)
    assert scores.output_shape == () and scores.captum_target is None
    got = distribute_within_features(x, scores, InputXGradient(net))
    expected = oracle(scores, mask, InputXGradient(net).attribute(x.clone(), target=None))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("form", ["composite", "captum", "captum-without-model"])
def test_a_model_in_training_mode_is_refused_before_its_statistics_move(form) -> None:
    """A composite (or Captum method) ran the model in training mode: every BatchNorm's running
    statistics changed, and the relevance used batch statistics."""
    from ctc_plugin.inputs import TrainingModeError

    torch.manual_seed(0)
    model = RandomCNN(CNNSpec(batch_norm=True)).eval()
    x = torch.rand(2, 3, 16, 16)
    mask = random_partition(16, 16, 4)
    _, scores = CTC(model).attribute(x, 1, feature_mask=mask, return_feature_scores=True)
    model.train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    method = {
        "composite": EpsilonPlusFlat(),
        "captum": InputXGradient(model),
        "captum-without-model": InputXGradient(model),
    }[form]
    given = {} if form == "captum-without-model" else {"model": model}
    with pytest.raises(TrainingModeError, match=r"model\.eval\(\)"):
        distribute_within_features(x, scores, method, **given)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
