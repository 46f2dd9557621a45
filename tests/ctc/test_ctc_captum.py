"""CTC inside Captum code: wrappers, metrics, visualisation, tuple inputs, torchvision models."""

from __future__ import annotations

import inspect

import matplotlib
import pytest
import torch
import torchvision
from captum.attr import InputXGradient, NoiseTunnel
from captum.attr import visualization as viz
from captum.metrics import infidelity, sensitivity_max
from torch import nn

from ctc_plugin import CTC, distribute_within_features
from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def model():
    return RandomCNN(CNNSpec(residual=True, normalise=True), seed=4)


def test_attribute_carries_wrapped_for_captum_wrappers(model):
    assert hasattr(CTC.attribute, "__wrapped__")
    x = torch.rand(2, 3, 8, 8)
    mask = random_partition(8, 8, 4)
    nt = NoiseTunnel(CTC(model, bias_sharing="proportional"))
    out = nt.attribute(
        x, nt_type="smoothgrad", nt_samples=3, stdevs=0.05, target=1, feature_mask=mask
    )
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_attribute_takes_inputs_and_target_by_position_and_the_rest_by_keyword(model):
    parameters = inspect.signature(CTC.attribute).parameters.values()
    positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == ["self", "inputs", "target"]
    assert all(p.kind is p.KEYWORD_ONLY for p in parameters if p.name not in positional)
    x = torch.rand(2, 3, 8, 8)
    mask = random_partition(8, 8, 4, seed=1)
    ctc = CTC(model, bias_sharing="proportional")
    for target in (None, 1, [2, 0], torch.tensor([0, 1])):
        by_position = ctc.attribute(x, target, feature_mask=mask)
        assert torch.equal(by_position, ctc.attribute(x, target=target, feature_mask=mask))
        assert torch.equal(by_position, ctc.attribute(inputs=x, target=target, feature_mask=mask))
    with pytest.raises(TypeError, match="positional"):
        ctc.attribute(x, 1, mask)
    with pytest.raises(TypeError, match="within_feature"):
        ctc.attribute(x, 1, feature_mask=mask, within_feature=torch.ones_like(x))


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq"])
@pytest.mark.parametrize("per_example_mask", [False, True])
def test_noise_tunnel_hands_ctc_its_keywords(model, nt_type, per_example_mask):
    """Captum's NoiseTunnel expands target, feature_mask and baselines per noisy sample."""
    x = torch.rand(2, 3, 8, 8)
    mask = random_partition(8, 8, 4, seed=2, batch=2 if per_example_mask else 1)
    ctc = CTC(model, bias_sharing="proportional")
    plain = ctc.attribute(x, [1, 2], feature_mask=mask, baselines=0.1)
    smoothed = NoiseTunnel(ctc).attribute(
        x,
        nt_type=nt_type,
        nt_samples=3,
        stdevs=0.0,  # no noise: every sample is the input, so the mean is the plain map
        target=[1, 2],
        feature_mask=mask,
        baselines=0.1,
    )
    expected = plain if nt_type == "smoothgrad" else plain * plain
    torch.testing.assert_close(smoothed, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["reference", "proportional", "none"])
def test_inputs_that_require_gradients_give_the_same_attributions(model, mode):
    """Captum code often hands over inputs with ``requires_grad=True``: the copies are built
    from their values, with a baseline copy and a reference full copy where the mode has them.
    The attributions hold no graph in every mode, as Captum's own methods give them ("none"'s
    gradient shortcut gave them one)."""
    x = torch.rand(2, 3, 8, 8)
    mask = random_partition(8, 8, 4, seed=4)
    ctc = CTC(model, bias_sharing=mode)
    plain = ctc.attribute(x, [1, 2], feature_mask=mask, baselines=0.1)
    leaf = x.clone().requires_grad_(True)
    attributions = ctc.attribute(leaf, [1, 2], feature_mask=mask, baselines=0.1)
    assert not attributions.requires_grad
    torch.testing.assert_close(attributions, plain)
    assert leaf.grad is None


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_captum_metrics_run_on_pixel_level_ctc(model):
    x = torch.rand(2, 3, 8, 8)
    mask = random_partition(8, 8, 4, seed=3)
    ctc = CTC(model, bias_sharing="proportional")

    def pixel_ctc(inputs, target, feature_mask):
        _, scores = ctc.attribute(
            inputs, target, feature_mask=feature_mask, return_feature_scores=True
        )
        return distribute_within_features(inputs, scores, InputXGradient(model))

    attributions = pixel_ctc(x, 0, mask)
    assert attributions.shape == x.shape

    def perturb(inputs):
        noise = 0.01 * torch.randn_like(inputs)
        return noise, inputs - noise

    value = infidelity(model, perturb, x, attributions, target=0, n_perturb_samples=4)
    assert value.shape == (2,) and torch.isfinite(value).all()
    sens = sensitivity_max(pixel_ctc, x, target=0, feature_mask=mask, n_perturb_samples=2)
    assert sens.shape == (2,) and torch.isfinite(sens).all()


def test_captum_metrics_run_on_ctc(model):
    x = torch.rand(2, 3, 8, 8)
    mask = random_partition(8, 8, 4)
    ctc = CTC(model, bias_sharing="proportional")
    attributions = ctc.attribute(x, target=0, feature_mask=mask)

    def perturb(inputs):
        noise = 0.01 * torch.randn_like(inputs)
        return noise, inputs - noise

    value = infidelity(model, perturb, x, attributions, target=0, n_perturb_samples=4)
    assert value.shape == (2,) and torch.isfinite(value).all()
    sens = sensitivity_max(ctc.attribute, x, target=0, feature_mask=mask, n_perturb_samples=2)
    assert sens.shape == (2,) and torch.isfinite(sens).all()


def test_output_feeds_captum_visualisation(model):
    x = torch.rand(1, 3, 8, 8)
    attributions = CTC(model).attribute(x, target=0, feature_mask=random_partition(8, 8, 4))
    figure, _ = viz.visualize_image_attr(
        attributions[0].permute(1, 2, 0).numpy(),
        x[0].permute(1, 2, 0).numpy(),
        method="blended_heat_map",
        sign="all",
        use_pyplot=False,
    )
    assert figure is not None


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.side = nn.Linear(5, 4)
        self.head = nn.Linear(8, 3)

    def forward(self, image, vector, scale):
        a = torch.relu(self.conv(image)).mean(dim=(2, 3))
        b = torch.relu(self.side(vector))
        return self.head(torch.cat([a, b], dim=1)) * scale


def test_tuple_inputs_share_feature_ids_and_extra_args_are_repeated():
    torch.manual_seed(0)
    model = _TwoInputs().double().eval()
    image = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    vector = torch.rand(2, 5, dtype=torch.float64)
    scale = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    image_mask = random_partition(6, 6, 3, spread=1)  # ids 1..3
    vector_mask = torch.tensor([[3, 3, 4, 4, 4]])  # id 3 is shared with the image
    attr, scores = CTC(model, bias_sharing="proportional").attribute(
        (image, vector),
        target=2,
        feature_mask=(image_mask, vector_mask),
        additional_forward_args=(scale,),
        return_feature_scores=True,
    )
    assert isinstance(attr, tuple) and attr[0].shape == image.shape
    assert attr[1].shape == vector.shape
    assert scores.ids.tolist() == [1, 2, 3, 4]
    torch.testing.assert_close(scores.scores.sum(1), model(image, vector, scale)[:, 2].detach())


def test_show_progress_draws_a_bar(model, capsys):
    x = torch.rand(1, 3, 8, 8)
    CTC(model, bias_sharing="reference").attribute(
        x,
        target=0,
        feature_mask=random_partition(8, 8, 4),
        perturbations_per_eval=2,
        show_progress=True,
    )
    assert "CTC" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["reference", "proportional", "none"])
def test_show_progress_draws_a_bar_in_every_mode(model, mode, capsys):
    """Also ``"none"``, whose default pass is one forward and one backward (one batch)."""
    x = torch.rand(1, 3, 8, 8)
    mask = random_partition(8, 8, 4)
    ctc = CTC(model, bias_sharing=mode)
    quiet = ctc.attribute(x, 0, feature_mask=mask)
    assert capsys.readouterr().err == ""
    shown = ctc.attribute(x, 0, feature_mask=mask, show_progress=True)
    assert f"CTC ({mode})" in capsys.readouterr().err
    assert torch.equal(shown, quiet)


def _random_batch_norm(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=generator) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=generator) * 0.4 - 0.2)
    return model.eval().double()


@pytest.mark.parametrize(
    ("name", "size"),
    [
        pytest.param("vgg16_bn", 32, marks=pytest.mark.slow),  # the zoo's VGG in make test
        ("resnet18", 32),
        ("resnet50", 32),
        ("densenet121", 32),
        ("inception_v3", 80),
    ],
)
def test_torchvision_models(name, size):
    torch.manual_seed(0)
    extra = {"init_weights": False, "aux_logits": False} if name == "inception_v3" else {}
    model = _random_batch_norm(
        getattr(torchvision.models, name)(weights=None, num_classes=5, **extra)
    )
    x = torch.rand(1, 3, size, size, dtype=torch.float64)
    mask = random_partition(size // 8, size // 8, 4, spread=1)
    mask = mask.repeat_interleave(8, 2).repeat_interleave(8, 3)
    _, proportional = CTC(model, bias_sharing="proportional").attribute(
        x, target=1, feature_mask=mask, return_feature_scores=True
    )
    logit = model(x)[:, 1].detach()
    torch.testing.assert_close(proportional.scores.sum(1), logit)
    _, plain = CTC(model, bias_sharing="none").attribute(
        x, target=1, feature_mask=mask, return_feature_scores=True
    )
    ixg = InputXGradient(model).attribute(x.clone().requires_grad_(True), target=1).detach()
    per_feature = torch.stack([(ixg * (mask == i)).sum() for i in plain.ids.tolist()])
    torch.testing.assert_close(plain.scores[0], per_feature)
    _, reference = CTC(model).attribute(x, target=1, feature_mask=mask, return_feature_scores=True)
    assert torch.isfinite(reference.scores).all()


def test_without_a_mask_the_segmenter_makes_one(model):
    from ctc_plugin.features import GridSegmenter, SuperpixelSegmenter

    x = torch.rand(2, 3, 16, 16)
    default = CTC(model).attribute(x, target=0)
    explicit = CTC(model).attribute(x, target=0, feature_mask=SuperpixelSegmenter()(x))
    torch.testing.assert_close(default, explicit)
    calls = []

    def segmenter(images):
        calls.append(images.shape)
        return GridSegmenter(2)(images)

    CTC(model, segmenter=segmenter).attribute(x, target=0)
    assert calls == [x.shape]
