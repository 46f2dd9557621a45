"""IntegrativeCAM against its peers (pytorch-grad-cam, Captum) and its own contracts."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_grad_cam import GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam.alpha import Phi
from ctc_plugin.cam.fusion import minmax
from tests.cam.cam_models import tiny_cnn, tiny_residual

SIZE = (16, 20)


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def gradcampp(model: nn.Module, layers: list[nn.Module], x: torch.Tensor, targets) -> np.ndarray:
    with GradCAMPlusPlus(model, target_layers=layers) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])


def plain_cam(model: nn.Module, layers: list[nn.Module], phi: str = "exp") -> IntegrativeCAM:
    return IntegrativeCAM(model, layers=layers, phi=phi, bias=False, layer_weights="uniform")


# -- peers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("layer_index", [0, 2, 4, 8])
def test_one_layer_exp_equals_gradcampp(layer_index: int) -> None:
    model = tiny_cnn(inplace=False)
    layer = model.features[layer_index]
    x, targets = images(), [0, 3, 1]
    ours = plain_cam(model, [layer]).attribute(x, target=targets)
    theirs = gradcampp(model, [layer], x, targets)
    assert ours.shape == (3, 1, *SIZE)
    np.testing.assert_allclose(ours[:, 0].numpy(), theirs, atol=2e-5)


def test_block_output_equals_gradcampp_on_residual_model() -> None:
    model = tiny_residual()
    x, targets = images(), [2, 0, 3]
    ours = plain_cam(model, [model.conv2]).attribute(x, target=targets)
    np.testing.assert_allclose(
        ours[:, 0].numpy(), gradcampp(model, [model.conv2], x, targets), atol=2e-5
    )


def test_several_layers_uniform_equals_gradcampp_mean_aggregation() -> None:
    model = tiny_cnn(inplace=False)
    layers = [model.features[2], model.features[6], model.features[8]]
    x, targets = images(), [4, 4, 0]
    ours = plain_cam(model, layers).attribute(x, target=targets)
    np.testing.assert_allclose(ours[:, 0].numpy(), gradcampp(model, layers, x, targets), atol=2e-5)


@pytest.mark.parametrize("layer_index", [2, 6])
def test_identity_equals_captum_layer_gradcam(layer_index: int) -> None:
    model = tiny_cnn(inplace=False)
    layer = model.features[layer_index]
    x, targets = images(), [1, 2, 3]
    ours = plain_cam(model, [layer], phi="identity").attribute(x, target=targets)
    theirs = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
    # The same normalisation: min-max at layer resolution, bilinear upsampling, min-max.
    theirs = minmax(LayerAttribution.interpolate(minmax(theirs), SIZE, "bilinear"))
    torch.testing.assert_close(ours, theirs.detach(), atol=1e-5, rtol=0)


def test_phi_without_curvature_falls_back_to_gradcam() -> None:
    model = tiny_cnn()
    layer = model.features[6]
    flat = Phi(d1=lambda s: 2 * torch.ones_like(s), d2=torch.zeros_like, d3=torch.zeros_like)
    x = images()
    a = plain_cam(model, [layer], phi="identity").attribute(x, target=1)
    b = IntegrativeCAM(model, [layer], phi=flat, bias=False, layer_weights="uniform").attribute(
        x, target=1
    )
    torch.testing.assert_close(a, b)


def test_callable_phi_differentiated_by_torch_func_matches_builtin() -> None:
    model = tiny_cnn()
    x = images()
    a = IntegrativeCAM(model, phi="softplus").attribute(x, target=2)
    b = IntegrativeCAM(model, phi=torch.nn.functional.softplus).attribute(x, target=2)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# -- in-place operations ----------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
def test_inplace_relu_gives_the_same_maps_as_out_of_place(bias: bool) -> None:
    inplace, outofplace = tiny_cnn(seed=3, inplace=True), tiny_cnn(seed=3, inplace=False)
    x = images()
    for layers in (None, [0], [4]):
        cams = [
            IntegrativeCAM(
                m, layers=None if layers is None else [m.features[i] for i in layers], bias=bias
            ).attribute(x, target=[0, 1, 2], return_layer_maps=True)
            for m in (inplace, outofplace)
        ]
        torch.testing.assert_close(cams[0][0], cams[1][0])
        torch.testing.assert_close(cams[0][1].maps, cams[1][1].maps)


def test_discovery_follows_functional_relu_and_residual_inplace_add() -> None:
    model = tiny_residual()
    _, layer_maps = IntegrativeCAM(model).attribute(images(), return_layer_maps=True)
    assert layer_maps.names == ["stem", "conv1", "conv2"]
    assert layer_maps.steps == [("conv", "relu"), ("conv", "bn", "relu"), ("conv", "bn")]


# -- fusion and weights -----------------------------------------------------------------------
@pytest.mark.parametrize("weights", ["adaptive", "uniform"])
def test_fused_map_is_the_weighted_mean_of_the_layer_maps(weights: str) -> None:
    model = tiny_cnn()
    fused, layer_maps = IntegrativeCAM(model, layer_weights=weights).attribute(
        images(), target=[0, 1, 2], return_layer_maps=True
    )
    assert layer_maps.maps.shape == (3, 3, *SIZE)
    torch.testing.assert_close(layer_maps.weights.sum(dim=1), torch.ones(3))
    if weights == "uniform":
        torch.testing.assert_close(layer_maps.weights, torch.full((3, 3), 1 / 3))
    expected = minmax((layer_maps.weights[:, :, None, None] * layer_maps.maps).sum(1, True))
    torch.testing.assert_close(fused, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_name", ["tiny_cnn", "tiny_residual"])
def test_adaptive_weights_follow_the_documented_score(model_name: str) -> None:
    """``s_l = mean(ReLU(g * A))``: on tiny_residual's ``conv2`` (conv, bn: no ReLU) ``A`` has
    negative values, where ``mean(ReLU(g) * A)`` would differ and could be negative."""
    if model_name == "tiny_cnn":
        model = tiny_cnn(inplace=False)
        layers = [model.features[2], model.features[6]]
    else:
        model = tiny_residual()
        layers = [model.conv1, model.conv2]
    x = images()
    _, layer_maps = IntegrativeCAM(model, layers=layers).attribute(
        x, target=1, return_layer_maps=True
    )
    acts = {}
    handles = [
        m.register_forward_hook(lambda mod, i, o, k=k: acts.__setitem__(k, o))
        for k, m in enumerate(layers)
    ]
    out = model(x)
    for h in handles:
        h.remove()
    grads = torch.autograd.grad(out[:, 1].sum(), [acts[0], acts[1]])
    scores = torch.stack(
        [torch.relu(g * acts[k]).mean(dim=(1, 2, 3)) for k, g in enumerate(grads)], dim=1
    )
    torch.testing.assert_close(layer_maps.weights, scores / scores.sum(1, keepdim=True))
    assert bool((layer_maps.weights >= 0).all())


def test_adaptive_weights_are_a_mean_on_stages_with_negative_activations() -> None:
    """Every stage of tiny_residual, ``conv2`` (no ReLU) included, for every class: weights in
    [0, 1] and the fused map their weighted mean."""
    model = tiny_residual()
    x = images(6, seed=3)
    for target in range(4):
        fused, layer_maps = IntegrativeCAM(model).attribute(
            x, target=target, return_layer_maps=True
        )
        assert bool((layer_maps.weights >= 0).all())
        torch.testing.assert_close(layer_maps.weights.sum(dim=1), torch.ones(6))
        expected = minmax((layer_maps.weights[:, :, None, None] * layer_maps.maps).sum(1, True))
        torch.testing.assert_close(fused, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("score", "message"),
    [
        (lambda grad, act: (grad * act).mean(dim=(1, 2, 3)) - 1.0, "non-negative"),
        (lambda grad, act: torch.full((grad.shape[0],), float("nan")), "finite"),
        (lambda grad, act: torch.ones(1), "one score per example"),
    ],
)
def test_a_layer_score_that_is_no_weight_is_refused(score, message: str) -> None:
    model = tiny_cnn()
    with pytest.raises(ValueError, match=message):
        IntegrativeCAM(model, layer_weights=score).attribute(images(), target=1)
    assert _forward_hook_count(model) == 0


def test_bias_changes_the_maps() -> None:
    model = tiny_cnn()
    x = images()
    with_bias = IntegrativeCAM(model).attribute(x, target=1)
    without = IntegrativeCAM(model, bias=False).attribute(x, target=1)
    assert not torch.allclose(with_bias, without)


# -- targets and batches ----------------------------------------------------------------------
def test_every_target_form_agrees() -> None:
    model = tiny_cnn()
    x = images()
    cam = IntegrativeCAM(model)
    expected = cam.attribute(x, target=[2, 2, 2])
    for target in (2, (2,), torch.tensor(2), torch.tensor([2, 2, 2]), [(2,), (2,), (2,)]):
        torch.testing.assert_close(cam.attribute(x, target=target), expected)
    callables = [ClassifierOutputTarget(2)] * 3
    torch.testing.assert_close(cam.attribute(x, target=callables), expected)
    predicted = model(x).argmax(dim=1).tolist()
    torch.testing.assert_close(cam.attribute(x), cam.attribute(x, target=predicted))


@settings(max_examples=8, deadline=None)
@given(
    st.lists(st.integers(0, 4), min_size=2, max_size=4),
    st.randoms(use_true_random=False),
    st.sampled_from(["exp", "softplus", "identity"]),
)
def test_batch_invariance(targets: list[int], rng, phi: str) -> None:
    model = tiny_cnn(seed=1)
    x = images(len(targets), seed=rng.randint(0, 1000))
    cam = IntegrativeCAM(model, phi=phi)
    batch = cam.attribute(x, target=targets)
    single = torch.cat([cam.attribute(x[i : i + 1], target=t) for i, t in enumerate(targets)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=0)
    order = list(range(len(targets)))
    rng.shuffle(order)
    shuffled = cam.attribute(x[order], target=[targets[i] for i in order])
    torch.testing.assert_close(shuffled, batch[order], atol=1e-5, rtol=0)


def test_additional_forward_args_and_tuple_inputs() -> None:
    model = tiny_cnn()

    def forward(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
        return model(a + b) * scale

    x = images()
    expected = IntegrativeCAM(model).attribute(x, target=1)
    got = IntegrativeCAM(forward).attribute(
        (x, torch.zeros_like(x)), target=1, additional_forward_args=(1.0,)
    )
    torch.testing.assert_close(got, expected)


def test_attribute_carries_wrapped_for_captum_wrappers() -> None:
    assert hasattr(IntegrativeCAM.attribute, "__wrapped__")
    assert IntegrativeCAM(tiny_cnn()).has_convergence_delta() is False


# -- failure modes ----------------------------------------------------------------------------
def _forward_hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("failure", ["target", "score", "layer_shape"])
def test_failed_call_leaves_the_model_as_it_was(failure: str) -> None:
    model = tiny_cnn()
    x = images()
    before_out, before_state = model(x).detach(), _state(model)
    if failure == "target":
        call = IntegrativeCAM(model).attribute
        kwargs = {"target": 99}
        raised, said = ValueError, r"target 99 .*out of range"
    elif failure == "score":

        def broken(grad: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

        call = IntegrativeCAM(model, layer_weights=broken).attribute
        kwargs = {"target": 1}
        raised, said = RuntimeError, "boom"
    else:
        call = IntegrativeCAM(model, layers=[model.head[1]]).attribute
        kwargs = {"target": 1}
        raised, said = ValueError, r"needs a 4-D feature map"
    with pytest.raises(raised, match=said):
        call(x, **kwargs)
    assert _forward_hook_count(model) == 0
    assert torch.equal(model(x), before_out)
    for key, value in _state(model).items():
        assert torch.equal(value, before_state[key])
    # and a later call works normally
    assert IntegrativeCAM(model).attribute(x, target=1).shape == (3, 1, *SIZE)


def test_model_without_convolutions_is_a_clear_error() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 20, 4))
    with pytest.raises(ValueError, match="no convolution"):
        IntegrativeCAM(mlp).attribute(images(), target=0)


def test_non_differentiable_output_is_a_clear_error() -> None:
    model = tiny_cnn()

    def no_grad_forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    with pytest.raises(ValueError, match="not differentiable"):
        IntegrativeCAM(no_grad_forward).attribute(images(), target=0)
    with pytest.raises(ValueError, match="not differentiable"):
        IntegrativeCAM(lambda x: model(x).argmax(1)).attribute(images())


def test_training_mode_batchnorm_is_refused_before_it_updates_statistics() -> None:
    model = tiny_cnn().train()
    before = _state(model)
    with pytest.raises(ValueError, match="training mode"):
        IntegrativeCAM(model).attribute(images(), target=0)
    for key, value in _state(model).items():
        assert torch.equal(value, before[key])
    assert _forward_hook_count(model) == 0


def test_bad_arguments() -> None:
    model = tiny_cnn()
    with pytest.raises(ValueError, match="unknown phi"):
        IntegrativeCAM(model, phi="cosh")
    with pytest.raises(ValueError, match="layer_weights"):
        IntegrativeCAM(model, layer_weights="softmax")
    with pytest.raises(ValueError, match="empty"):
        IntegrativeCAM(model, layers=[])
    with pytest.raises(ValueError, match="not called"):
        IntegrativeCAM(model, layers=[nn.Conv2d(3, 3, 1)]).attribute(images(), target=0)
    with pytest.raises(ValueError, match="targets"):
        IntegrativeCAM(model).attribute(images(), target=[0, 1])


def test_model_is_deep_copy_safe() -> None:
    """A deep copy explains its own copy of the model as the original explains the model."""
    model = tiny_cnn()
    cam = IntegrativeCAM(model)
    copied = copy.deepcopy(cam)
    assert copied.forward_func is not model
    torch.testing.assert_close(
        copied.attribute(images(), target=0), cam.attribute(images(), target=0)
    )


# -- memory and coverage ----------------------------------------------------------------------
def test_each_stage_is_released_before_the_next_gradient_arrives(monkeypatch) -> None:
    from ctc_plugin.cam import integrative

    model = tiny_residual()
    seen: list[tuple[int, int]] = []
    original = integrative._Run.on_grad

    def spy(self, stage, grad):
        holding = sum(s.tensor is not None or s.snapshot is not None for s in self.stages)
        seen.append((holding, len(self.fusion.weighted)))
        return original(self, stage, grad)

    monkeypatch.setattr(integrative._Run, "on_grad", spy)
    IntegrativeCAM(model).attribute(images(), target=0)
    # the k-th hook to fire finds k stages released; one running sum per map resolution
    assert [holding for holding, _ in seen] == [3, 2, 1]
    assert all(sums <= 1 for _, sums in seen)


@pytest.mark.parametrize("family", ["vgg", "resnet", "densenet", "inception"])
def test_every_zoo_family_gets_finite_maps(family: str) -> None:
    from ctc_plugin import zoo

    model = zoo.build(family, 6).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fused, layer_maps = IntegrativeCAM(model).attribute(x, target=[1, 4], return_layer_maps=True)
    assert fused.shape == (2, 1, 32, 32) and torch.isfinite(fused).all()
    assert len(layer_maps.names) >= 5
    assert ("conv", "bn", "relu") in layer_maps.steps  # functional or module ReLU, folded BN
    torch.testing.assert_close(layer_maps.weights.sum(1), torch.ones(2))


def test_target_independent_of_the_layers_is_a_clear_error() -> None:
    model = tiny_cnn()

    def forward(x: torch.Tensor) -> torch.Tensor:
        model(x)  # the stages run, but the score ignores them
        return x.mean(dim=(2, 3))

    with pytest.raises(ValueError, match="no gradient"):
        IntegrativeCAM(forward).attribute(images(), target=0)


def test_calibrate_scales_each_map_to_its_contribution() -> None:
    from ctc_plugin.cam.calibration import calibrate

    maps = torch.rand(3, 4, 5)
    maps[2] = 0
    contribution = torch.tensor([2.0, -0.5, 7.0])
    out = calibrate(maps, contribution)
    torch.testing.assert_close(out[:2].sum(dim=(1, 2)), contribution[:2].abs())
    torch.testing.assert_close(
        out[:2] / maps[:2], out[:2, :1, :1] / maps[:2, :1, :1].expand(2, 4, 5)
    )
    assert torch.equal(out[2], maps[2])


def test_alpha_terms_in_another_dtype_keep_the_call_s_summaries_without_reading_them_again(
    monkeypatch,
) -> None:
    """Each stage's hook converts the per-call terms to its map's dtype: the conversion built
    new terms and read five summaries from the device again, in every stage's hook."""
    from ctc_plugin.cam.alpha import AlphaTerms, alpha_terms, resolve_phi

    terms = alpha_terms(resolve_phi("exp"), torch.tensor([-2.0, 0.5, 3.0]))
    reads = []
    monkeypatch.setattr(AlphaTerms, "__post_init__", lambda self: reads.append(self))
    converted = terms.to(torch.float64)
    assert reads == [] and converted.sign.dtype == torch.float64
    for name in ("all_positive", "all_gradcam", "any_gradcam", "any_opposite"):
        assert getattr(converted, name) == getattr(terms, name)
    assert torch.equal(converted.opposite, terms.opposite)
    torch.testing.assert_close(converted.p2, terms.p2.double())
