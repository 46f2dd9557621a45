"""Zennit hand-over: LRP-alpha1-beta0 against plain torch; the model is left as it was."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from zennit.composites import EpsilonPlusFlat

from ctc_plugin.features import lrp_alpha1beta0, relevance_heatmap, zennit_relevance


def linear_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5, bias=False))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), target=st.integers(0, 4))
def test_alpha1beta0_matches_plain_torch_on_a_linear_layer(seed, target):
    model = linear_model(seed)
    images = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    got = zennit_relevance(model, images, target)
    # alpha=1, beta=0 with non-negative inputs: R_i = x_i w_ci^+ / sum_i' x_i' w_ci'^+
    weight = model[1].weight[target].clamp(min=0)
    contributions = images.flatten(1) * weight
    expected = contributions / contributions.sum(dim=1, keepdim=True)
    expected = expected.view(2, 3, 4, 4).sum(dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def conv_bn_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 3),
    )
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    return model.eval()


def test_model_is_left_as_it_was_also_on_error():
    model = conv_bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(2, 3, 8, 8)
    heatmap = zennit_relevance(model, images, target=None, composite=lrp_alpha1beta0())
    assert heatmap.shape == (2, 8, 8)
    with pytest.raises(ValueError, match="target"):
        zennit_relevance(model, images, target=[0, 1, 2])
    with pytest.raises(RuntimeError):
        zennit_relevance(model, torch.rand(2, 5, 8, 8))  # wrong channels: fails inside the pass
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_target_none_is_the_predicted_class():
    model = conv_bn_model()
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    predicted = model(images).argmax(dim=1)
    torch.testing.assert_close(
        zennit_relevance(model, images), zennit_relevance(model, images, predicted)
    )


def test_any_composite_and_any_callable_are_accepted():
    model = conv_bn_model()
    images = torch.rand(2, 3, 8, 8)
    other = relevance_heatmap(EpsilonPlusFlat(), model, images, target=0)
    assert other.shape == (2, 8, 8)
    constant = relevance_heatmap(lambda x, t: torch.ones(2, 1, 8, 8), model, images)
    assert torch.equal(constant, torch.ones(2, 8, 8))
    with pytest.raises(TypeError, match="relevance must be"):
        relevance_heatmap(42, model, images)


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
@pytest.mark.parametrize("target", [None, 2, [1, 0]])
def test_selection_and_pixel_level_ctc_share_one_relevance_dispatch(target):
    """relevance_heatmap and distribute_within_features run every form the same way."""
    from captum.attr import InputXGradient

    from ctc_plugin import CTC, distribute_within_features
    from ctc_plugin.ctc.masks import prepare_features
    from ctc_plugin.ctc.within import spread_by_relevance
    from ctc_plugin.relevance import compute_relevance

    model = conv_bn_model().double()
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5)).double()
    forms = {
        "tensor": torch.randn(2, 3, 8, 8, dtype=torch.float64),
        "composite": EpsilonPlusFlat(),
        "captum": InputXGradient(model),
        "callable": lambda x, t: x * (1.0 + torch.as_tensor(t).view(-1, 1, 1, 1)),
    }
    mask = torch.arange(4).view(1, 1, 2, 2).repeat_interleave(4, 2).repeat_interleave(4, 3)
    _, scores = CTC(model).attribute(images, target, feature_mask=mask, return_feature_scores=True)
    for name, form in forms.items():
        relevance = compute_relevance(form, images, scores.target, model=model)
        assert relevance.shape == images.shape, name
        heatmap = relevance_heatmap(form, model, images, scores.target)
        torch.testing.assert_close(heatmap, relevance.sum(dim=1).float(), msg=name)
        pixels = distribute_within_features(images, scores, form, model=model)
        features = prepare_features((images,), mask)
        (expected,) = spread_by_relevance(scores.scores, features, (images,), (relevance,))
        torch.testing.assert_close(pixels, expected, msg=name)
    for bad in (42, "lrp", None):
        with pytest.raises(TypeError) as from_pixels:
            distribute_within_features(images, scores, bad, model=model)
        if bad is not None:  # None is feature selection's default (LRP-alpha1-beta0)
            with pytest.raises(TypeError) as from_selection:
                relevance_heatmap(bad, model, images)
            assert str(from_selection.value) == str(from_pixels.value)
    composite_needs_model = "runs on the classifier's modules: pass model=<torch.nn.Module>"
    with pytest.raises(ValueError, match=composite_needs_model):
        distribute_within_features(images, scores, EpsilonPlusFlat())
    with pytest.raises(ValueError, match=composite_needs_model):
        relevance_heatmap(EpsilonPlusFlat(), None, images)


def test_default_lrp_falls_back_when_batchnorm_merging_changes_the_model():
    import warnings

    from ctc_plugin import zoo
    from ctc_plugin.features import zennit_relevance

    model = zoo.load("densenet")  # pre-activation blocks: merging BatchNorm is wrong here
    images = torch.rand(2, 3, 96, 96)
    before = [p.clone() for p in model.state_dict().values()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        relevance = zennit_relevance(model, images, target=1)
    assert relevance.shape == (2, 96, 96) and torch.isfinite(relevance).all()
    assert any("SequentialMergeBatchNorm" in str(w.message) for w in caught)
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))


@pytest.mark.parametrize("off", [torch.no_grad, torch.inference_mode])
def test_the_relevance_is_computed_where_the_caller_turned_gradients_off(off):
    """Evaluation code runs under no_grad: the LRP relevance (and so the default feature
    selection) failed inside Zennit ("'NoneType' object has no attribute 'register_hook'")."""
    from ctc_plugin.features import select_features
    from ctc_plugin.testing import RandomCNN

    model = RandomCNN(seed=0).eval()
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    mask = torch.arange(16).reshape(4, 4).repeat_interleave(10, 0).repeat_interleave(10, 1)
    mask = mask.expand(2, 1, 40, 40)
    expected = zennit_relevance(model, images, 0)
    kept = select_features(mask, images, model=model, target=0)
    with off():
        got = zennit_relevance(model, images, 0)
        got_composite = zennit_relevance(model, images, 0, composite=EpsilonPlusFlat())
        selected = select_features(mask, images, model=model, target=0)
    torch.testing.assert_close(got, expected)
    assert torch.isfinite(got_composite).all()
    assert torch.equal(selected.mask, kept.mask)
    assert [list(ids) for ids in selected.selected] == [list(ids) for ids in kept.selected]


def test_compute_relevance_names_a_model_given_where_the_inputs_go():
    """relevance_heatmap takes the model second, compute_relevance by keyword: the model given
    by position was taken for the inputs and refused with "pass model=" for the composite."""
    from zennit.composites import EpsilonPlusFlat

    from ctc_plugin.relevance import compute_relevance

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten()).eval()
    with pytest.raises(TypeError, match=r"takes the model by keyword, and got a Sequential"):
        compute_relevance(EpsilonPlusFlat(), model, torch.rand(1, 3, 8, 8))
