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
