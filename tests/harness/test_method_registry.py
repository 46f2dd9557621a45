import warnings

import pytest
import torch
from captum.attr import FeatureAblation

from ctc_plugin import zoo
from ctc_plugin.harness.methods import registry


def grid_mask(size=32, cell=8):
    ids = torch.arange(size // cell).repeat_interleave(cell)
    return (ids[:, None] * (size // cell) + ids[None, :])[None, None]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = zoo.build("resnet", 3).eval()
    images = torch.rand(2, 3, 32, 32)
    return model, images, torch.tensor([0, 2]), grid_mask().expand(2, 1, 32, 32)


def test_every_method_returns_finite_maps(setup):
    model, images, targets, mask = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name, spec in registry(n_samples=20, ig_steps=4).items():
        if spec.applies_to is not None and not spec.applies_to(model):
            continue
        maps = spec.fn(model, images, targets, mask if spec.uses_features else None)
        assert maps.shape == (2, 1, 32, 32), name
        assert torch.isfinite(maps).all(), name
        if spec.uses_features:  # one value per feature: constant inside every grid cell
            cells = maps.unfold(2, 8, 8).unfold(3, 8, 8)
            assert torch.allclose(cells.amax((-1, -2)), cells.amin((-1, -2)), atol=1e-6), name
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", ["Lime", "KernelShap"])
def test_sampling_methods_draw_the_same_samples_in_every_call(setup, name):
    """Two calls on one image gave two maps: the robustness columns measured that noise too
    (max-sensitivity 0.2 and more at radius 0). The caller's random state is left alone."""
    model, images, targets, mask = setup
    method = registry(n_samples=20)[name].fn
    first = method(model, images, targets, mask)
    state = torch.get_rng_state()
    torch.testing.assert_close(method(model, images, targets, mask), first, rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), state)
    alone = method(model, images[1:], targets[1:], mask[1:])  # whatever else is in the batch
    torch.testing.assert_close(alone, first[1:], rtol=0, atol=0)


def test_feature_ablation_entry_is_captums(setup):
    model, images, targets, mask = setup
    ours = registry()["FeatureAblation"].fn(model, images, targets, mask)
    theirs = FeatureAblation(model).attribute(images, target=targets, feature_mask=mask)
    torch.testing.assert_close(ours, theirs[:, :1])


def test_zennit_on_preactivation_densenet_falls_back_and_leaves_model_alone():
    torch.manual_seed(0)
    model = zoo.build("densenet", 3).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(1, 3, 32, 32)
    import ctc_plugin.harness.methods as methods

    methods._WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = registry()["LRP-EpsilonPlusFlat"].fn(model, x, torch.tensor([1]), None)
    assert any("BatchNorm merging changed the model" in str(w.message) for w in caught)
    assert maps.shape == (1, 1, 32, 32) and torch.isfinite(maps).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in zoo.build("densenet", 3).parameters()
    )


def test_both_kinds_of_explainer_join_the_registry_when_given():
    from ctc_plugin.explainer.attribution import ExplainerAttribution

    model = zoo.load("resnet")
    default, specific = (
        zoo.load_explainer("resnet"),
        zoo.load_explainer("resnet", kind="class-specific"),
    )
    assert "Explainer" not in registry() and "Explainer-class-specific" not in registry()
    methods = registry(default, explainers={"class-specific": specific})
    images, targets = torch.rand(2, 3, 96, 96), torch.tensor([1, 4])
    for name, explainer in (("Explainer", default), ("Explainer-class-specific", specific)):
        maps = methods[name].fn(model, images, targets, None)
        expected = ExplainerAttribution(model, explainer).attribute(images, target=targets)
        torch.testing.assert_close(maps, expected[:, :1])


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = zoo.build("vit", 3).eval()
    return model, torch.rand(2, 3, 96, 96), torch.tensor([0, 2])


def test_attn_lrp_is_lxts_and_leaves_torch_classes_as_they_were(vit):
    pytest.importorskip("lxt", reason="AttnLRP needs the optional lxt package")
    model, images, targets = vit
    spec = registry()["AttnLRP"]
    assert spec.source == "lxt" and spec.applies_to(model)
    assert not spec.applies_to(zoo.build("resnet", 3))
    classes = (torch.nn.LayerNorm, torch.nn.GELU, torch.nn.MultiheadAttention)
    before = [dict(vars(cls)) for cls in classes]
    maps = spec.fn(model, images, targets, None)
    assert [dict(vars(cls)) for cls in classes] == before
    assert maps.shape == (2, 1, 96, 96) and torch.isfinite(maps).all()
    plain = registry()["InputXGradient"].fn(model, images, targets, None)
    assert not torch.allclose(maps, plain)  # the AttnLRP rules changed the relevance


def test_grad_cam_on_a_transformer_uses_its_last_block_with_a_reshape(vit):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from ctc_plugin.cam import tokens_to_grid

    model, images, targets = vit
    ours = registry()["GradCAM"].fn(model, images, targets, None)
    with GradCAM(model, [model.blocks[-1]], reshape_transform=tokens_to_grid) as cam:
        theirs = cam(images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    torch.testing.assert_close(ours[:, 0], torch.from_numpy(theirs))


def test_zennit_lrp_is_for_cnns_and_attn_lrp_selects_a_transformers_features(vit, monkeypatch):
    from ctc_plugin.harness import benchmark, scoring
    from ctc_plugin.harness.benchmark import BenchmarkConfig

    model, images, targets = vit
    for name in ("LRP-EpsilonPlusFlat", "LRP-alpha1beta0"):
        assert not registry()[name].applies_to(model), name
        assert registry()[name].applies_to(zoo.build("resnet", 3)), name
    config = BenchmarkConfig(methods=("CTC-none", "LRP-alpha1beta0"))
    variants, notes = benchmark._plan(config, "vit", "shapes", {}, model)
    assert all(v.label.startswith("CTC-none") for v in variants)
    assert notes == ["vit/shapes LRP-alpha1beta0: does not apply to this model"]
    pytest.importorskip("lxt", reason="AttnLRP needs the optional lxt package")
    calls = []
    attn_lrp = registry()["AttnLRP"].fn

    def recording(*args):
        calls.append(args[2])
        return attn_lrp(*args)

    monkeypatch.setattr(
        scoring,
        "peer_methods",
        lambda: [
            spec if spec.name != "AttnLRP" else type(spec)(**{**vars(spec), "fn": recording})
            for spec in registry().values()
            if spec.source in ("captum", "zennit", "pytorch-grad-cam", "lxt")
        ],
    )
    masks = scoring.feature_makers(model)["selected"](images, targets)
    assert calls and torch.equal(calls[0], targets)
    assert masks.shape == (2, 1, 96, 96)


def test_a_zennit_failure_keeps_its_cause(setup, monkeypatch):
    """Both attempts' errors were swallowed: "Zennit could not explain this model", no reason."""
    import zennit.attribution

    model, images, targets, _ = setup

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(zennit.attribution, "Gradient", broken)
    with pytest.raises(RuntimeError, match=r"could not explain .*out of memory \(simulated\)") as e:
        registry()["LRP-EpsilonPlusFlat"].fn(model, images, targets, None)
    assert isinstance(e.value.__cause__, RuntimeError)


def test_every_method_leaves_the_parameters_gradients_as_they_were(setup):
    """pytorch-grad-cam's zero_grad() and backward() set .grad on every parameter (38 of 38 on
    a ResNet): a later optimiser step would use them, and gradients already there were lost."""
    model, images, targets, mask = setup
    marked = next(model.parameters())
    marked.grad = torch.full_like(marked, 7.0)  # the user's own, accumulated before
    try:
        for name, spec in registry(n_samples=8, ig_steps=2).items():
            if spec.applies_to is not None and not spec.applies_to(model):
                continue
            spec.fn(model, images, targets, mask if spec.uses_features else None)
            with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
            assert with_grad == [next(iter(dict(model.named_parameters())))], name
            assert torch.equal(marked.grad, torch.full_like(marked, 7.0)), name
    finally:
        marked.grad = None
