"""On a CUDA device every method runs there and gives the CPU's values (skipped without one).

The comparisons run in float64 with TF32 off, so that the devices differ only in the order of
float sums; ``"reference"`` sharing quantises ratios, which such differences can move across a
quantisation step, so its tolerance is wider. The shipped explainers run as they ship, in
float32: see `EXPLAINER_TOLERANCE`. ``benchmarks/gpu_check.sh`` runs this file on a lent GPU.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torchvision

from ctc_plugin import CTC, CTCAttributor, CTCComposite, IntegrativeCAM, zoo
from ctc_plugin.ctc.modes import DEFAULT_BIAS_SHARING
from ctc_plugin.ctc.speedups import DEFAULT
from ctc_plugin.explainer.attribution import ExplainerAttribution
from ctc_plugin.model_families import huggingface_classifier, timm_classifier
from ctc_plugin.zoo.explainers import KINDS, shipped_explainers

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
TOLERANCE = {"none": 1e-6, "proportional": 1e-6, "reference": 2e-2}
#: float32 rounding alone moves the shipped explainers' masks by up to 1e-5 of the largest
#: (against float64, on a CPU: VGG's class-specific one), and cuDNN's convolution algorithms
#: (Winograd, FFT) round differently from the CPU's again; a misplaced tensor moves them by
#: far more than this
EXPLAINER_TOLERANCE = 1e-3


@pytest.fixture(autouse=True)
def _exact_cuda_arithmetic():
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def grid_mask(size: int, cells: int = 4) -> torch.Tensor:
    rows = torch.arange(size) * cells // size
    return (rows[:, None] * cells + rows[None, :])[None, None]


def torchvision_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    options = {"aux_logits": False, "init_weights": True} if name == "inception_v3" else {}
    return torchvision.models.get_model(name, weights=None, num_classes=10, **options).eval()


def assert_same_on_both(cpu: torch.Tensor, gpu: torch.Tensor, relative: float) -> None:
    assert gpu.device.type == "cuda"
    scale = cpu.abs().max().clamp_min(1e-12)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=relative, atol=relative * scale.item())


@pytest.mark.parametrize("mode", ["reference", "proportional", "none"])
@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("resnet18", 64),
        ("resnet50", 64),
        ("vgg16_bn", 64),
        ("densenet121", 64),
        ("inception_v3", 96),
    ],
)
def test_ctc_on_cuda_gives_the_cpu_scores(name, size, mode):
    model = torchvision_model(name).double()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)).double()
    target, mask = torch.tensor([3, 7]), grid_mask(size)
    options = {"target": target, "feature_mask": mask, "return_feature_scores": True}
    _, cpu = CTC(model, bias_sharing=mode).attribute(x, **options)
    model.to(CUDA)
    options.update(target=target.to(CUDA), feature_mask=mask.to(CUDA))
    result, gpu = CTC(model, bias_sharing=mode).attribute(x.to(CUDA), **options)
    assert result.device.type == "cuda" and gpu.scores.device.type == "cuda"
    assert_same_on_both(cpu.scores, gpu.scores, TOLERANCE[mode])
    if mode == "proportional":  # completeness holds on the GPU too
        logits = model(x.to(CUDA)).gather(1, target.to(CUDA)[:, None])[:, 0]
        torch.testing.assert_close(gpu.scores.sum(1), logits, rtol=1e-8, atol=1e-8)


#: Families whose rules run code of their own (tiny configurations, random weights): LSTMs
#: over rows and columns (the recurrent steps), factorised attention (a deferred product of two
#: signals), SigLIP 2 (images cut into patch sequences), Swin v2 (cosine attention, F.normalize)
MODERN = {
    "timm sequencer2d_s": lambda: timm_classifier("sequencer2d_s", 64),
    "timm coat_lite_tiny": lambda: timm_classifier("coat_lite_tiny", 64),
    "transformers SigLIP 2": lambda: huggingface_classifier("SigLIP 2"),
    "transformers Swin v2": lambda: huggingface_classifier("Swin v2"),
}


@pytest.mark.parametrize("mode", ["reference", "proportional", "none"])
@pytest.mark.parametrize("family", MODERN)
def test_ctc_on_cuda_gives_the_cpu_scores_on_modern_families(family, mode):
    pytest.importorskip("timm" if family.startswith("timm") else "transformers")
    model = MODERN[family]()
    size = 64 if family.startswith("timm") else 32
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)).double()
    options = {"target": 1, "feature_mask": grid_mask(size), "return_feature_scores": True}
    _, cpu = CTC(model, bias_sharing=mode).attribute(x, **options)
    model.to(CUDA)
    options["feature_mask"] = options["feature_mask"].to(CUDA)
    _, gpu = CTC(model, bias_sharing=mode).attribute(x.to(CUDA), **options)
    assert_same_on_both(cpu.scores, gpu.scores, TOLERANCE[mode])


@pytest.mark.parametrize("mode", ["proportional", "none"])
def test_ctc_on_cuda_through_the_attention_function_with_boolean_masks(mode):
    """``F.multi_head_attention_forward`` called with boolean masks (``nn.MultiheadAttention``
    makes them float first): the additive mask is built on the masks' device."""
    from tests.ctc.test_multihead_attention_masks_and_separate_projections_by_hand import (
        _case,
    )

    model, x, mask = _case(separate=False, masks="bool", functional=True)
    options = {"target": [0, 2], "feature_mask": mask, "return_feature_scores": True}
    _, cpu = CTC(model, bias_sharing=mode).attribute(x, **options)
    model.to(CUDA)
    options["feature_mask"] = mask.to(CUDA)
    _, gpu = CTC(model, bias_sharing=mode).attribute(x.to(CUDA), **options)
    assert_same_on_both(cpu.scores, gpu.scores, TOLERANCE[mode])


@pytest.mark.parametrize("mode", ["reference", "proportional"])
def test_compiled_sharing_on_cuda_gives_the_cpu_scores(mode):
    """``Speedups.compiled_sharing``: the spec's sharing as Triton kernels (compiles first)."""
    model = torchvision_model("resnet18").double()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)).double()
    target, mask = torch.tensor([3, 7]), grid_mask(64)
    options = {"target": target, "feature_mask": mask, "return_feature_scores": True}
    _, cpu = CTC(model, bias_sharing=mode).attribute(x, **options)
    model.to(CUDA)
    options.update(target=target.to(CUDA), feature_mask=mask.to(CUDA))
    compiled = CTC(model, bias_sharing=mode)
    compiled._speedups = replace(DEFAULT, compiled_sharing=True)
    _, gpu = compiled.attribute(x.to(CUDA), **options)
    assert_same_on_both(cpu.scores, gpu.scores, TOLERANCE[mode])


@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_ctc_and_integrative_cam_on_cuda_for_the_zoo(family):
    model = zoo.load(family).double()
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(2)).double()
    target, mask = torch.tensor([0, 4]), grid_mask(96)
    ctc_cpu = CTC(model).attribute(x, target=target, feature_mask=mask)
    cam_cpu = IntegrativeCAM(model).attribute(x, target=target)
    model.to(CUDA)
    ctc_gpu = CTC(model).attribute(x.to(CUDA), target=target.to(CUDA), feature_mask=mask.to(CUDA))
    cam_gpu = IntegrativeCAM(model).attribute(x.to(CUDA), target=target.to(CUDA))
    assert_same_on_both(ctc_cpu, ctc_gpu, TOLERANCE[DEFAULT_BIAS_SHARING])
    assert_same_on_both(cam_cpu, cam_gpu, 1e-6)


def test_zennit_composite_on_cuda_gives_the_cpu_relevance():
    model = zoo.load("resnet").double()
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(3)).double()
    one_hot, mask = torch.eye(6, dtype=torch.float64)[[2]], grid_mask(96)
    composite = CTCComposite(bias_sharing="proportional")
    with CTCAttributor(model, composite, feature_mask=mask) as attributor:
        _, cpu = attributor(x, one_hot)
    model.to(CUDA)
    with CTCAttributor(model, composite, feature_mask=mask.to(CUDA)) as attributor:
        _, gpu = attributor(x.to(CUDA), one_hot.to(CUDA))
    assert_same_on_both(cpu, gpu, 1e-6)


@pytest.mark.parametrize(
    ("family", "kind"),
    [(f, kind) for kind in KINDS for f, s in shipped_explainers(kind) if s == "shapes"],
)
def test_shipped_explainers_on_cuda_give_the_cpu_masks(family, kind):
    model = zoo.load(family)
    explainer = zoo.load_explainer(family, kind=kind)
    x = torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    target = torch.tensor([0, 1, 2, 5])
    cpu = ExplainerAttribution(model, explainer).attribute(x, target=target)
    model.to(CUDA), explainer.to(CUDA)
    gpu = ExplainerAttribution(model, explainer).attribute(x.to(CUDA), target=target.to(CUDA))
    assert_same_on_both(cpu, gpu, EXPLAINER_TOLERANCE)


def test_sam_segmenter_on_cuda_gives_the_cpu_segments():
    from ctc_plugin.adapters.sam import SAMSegmenter, build_tiny_sam

    images = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(5))
    options = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    cpu = SAMSegmenter(model=build_tiny_sam(), cache=None, **options)(images)
    segmenter = SAMSegmenter(model=build_tiny_sam(), cache=None, device="cuda", **options)
    assert next(segmenter.generator.predictor.model.parameters()).device.type == "cuda"
    gpu = segmenter(images.to(CUDA))
    assert gpu.shape == cpu.shape and (cpu > 0).any()
    assert (gpu.cpu() == cpu).float().mean() > 0.99  # float sums may flip a border pixel


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_noise_takes_a_cuda_generator_and_repeats_with_its_seed(kind):
    """A ``torch.Generator("cuda")`` draws the noise on its GPU (a CPU one keeps the CPU's)."""
    from ctc_plugin.evaluation.perturbations import perturb

    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(6)).to(CUDA)
    first = perturb(images, kind, "big", generator=torch.Generator(CUDA).manual_seed(7))
    again = perturb(images, kind, "big", generator=torch.Generator(CUDA).manual_seed(7))
    assert first.device.type == "cuda" and torch.equal(first, again)
    assert not torch.equal(first, images) and 0 <= first.min() and first.max() <= 1
    on_cpu = perturb(images.cpu(), kind, "big", generator=torch.Generator().manual_seed(7))
    from_cpu = perturb(images, kind, "big", generator=torch.Generator().manual_seed(7))
    assert torch.equal(from_cpu.cpu(), on_cpu)


def test_localisation_of_cuda_maps_against_cpu_masks_gives_the_cpu_scores():
    from ctc_plugin.evaluation import localisation

    maps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[:, 4:10, 5:12] = True
    for name in ("pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy"):
        metric = getattr(localisation, name)
        cpu, gpu = metric(maps, masks), metric(maps.to(CUDA), masks)
        assert gpu.device.type == "cpu"
        torch.testing.assert_close(gpu, cpu, equal_nan=True)
    predicted = localisation.binarize(maps.to(CUDA), 0.5)
    for metric in (localisation.iou, localisation.f1):
        torch.testing.assert_close(metric(predicted, masks), metric(predicted.cpu(), masks))


def test_the_sanity_check_leaves_the_cuda_random_state_as_it_was():
    """``fork_rng(devices=[])`` with ``manual_seed`` inside reseeded every CUDA generator."""
    from ctc_plugin.evaluation.sanity import cascading_randomisation

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten()).to(CUDA).eval()
    x = torch.rand(2, 3, 6, 6, device=CUDA)
    state = torch.cuda.get_rng_state(CUDA)
    cascading_randomisation(
        lambda m, images, t, f: images.sum(1, keepdim=True), model, x, target=[0, 1]
    )
    assert torch.equal(torch.cuda.get_rng_state(CUDA), state)


def test_zoo_train_and_evaluate_run_a_cuda_model_there():
    """The images are made on the CPU; each batch goes to the model's device."""
    from ctc_plugin.zoo.settings import TrainConfig

    torch.manual_seed(0)
    model = zoo.build("vgg", 6)
    cpu_accuracy = zoo.evaluate(model, "shapes", size=40, seed=2, batch_size=16)
    model.to(CUDA)
    cuda_accuracy = zoo.evaluate(model, "shapes", size=40, seed=2, batch_size=16)
    assert cuda_accuracy == pytest.approx(cpu_accuracy, abs=0.05)  # a near tie may flip
    config = TrainConfig(size=8, epochs=1, batch_size=4, image_size=32)
    assert zoo.train(model, "shapes", config, show_progress=False) is model
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert 0.0 <= zoo.evaluate(model, "shapes", size=40, seed=2, batch_size=16) <= 1.0


def test_explainer_fit_and_its_specificity_table_take_cpu_baselines_and_pairs():
    """A tensor baseline given on the CPU (batches go to the explainer's device, the baseline
    did not) and the CPU class pairs and sums of the specificity table."""
    from ctc_plugin.datasets import ShapesDataset
    from ctc_plugin.explainer.specificity import specificity_table, two_object_images
    from ctc_plugin.zoo.explainers import load_explainer

    classifier = zoo.load("resnet").to(CUDA)
    explainer = load_explainer("resnet", "shapes").to(CUDA)
    data = ShapesDataset("shapes", size=200, seed=7)
    loader = [(data[i]["image"][None], torch.tensor([data[i]["label"]])) for i in range(4)]
    baseline = torch.full((3, 1, 1), 0.5)  # on the CPU, as a CPU run takes it
    result = explainer.fit(classifier, loader, epochs=1, baseline=baseline, show_progress=False)
    assert len(result.history) == 1  # an epoch of four CUDA batches
    images, pairs = two_object_images(data, 8)
    on_cuda = specificity_table(classifier, explainer, images.to(CUDA), pairs, data.classes)
    on_cpu = specificity_table(classifier.cpu(), explainer.cpu(), images, pairs, data.classes)
    torch.testing.assert_close(
        on_cuda.own_mask, on_cpu.own_mask, atol=1e-3, rtol=1e-3, equal_nan=True
    )
    assert torch.equal(on_cuda.counts, on_cpu.counts)


def test_a_resumed_fit_on_cuda_draws_the_dropout_of_an_uninterrupted_one(tmp_path):
    """Dropout on a GPU draws from that device's generator, which checkpoints did not hold."""
    from torch.utils.data import DataLoader, TensorDataset

    from ctc_plugin import Explainer
    from ctc_plugin.explainer.backbones import build_backbone
    from ctc_plugin.explainer.presets import ExplainerHyperparameters

    def explainer() -> Explainer:
        torch.manual_seed(0)
        backbone = torch.nn.Sequential(
            torch.nn.Dropout(0.5), build_backbone("unet-small", 3, width=2)
        )
        return Explainer(backbone, 3).to(CUDA)

    def loader() -> DataLoader:
        images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
        generator = torch.Generator().manual_seed(5)
        return DataLoader(TensorDataset(images, labels), batch_size=4, shuffle=True,
                          generator=generator)  # fmt: skip

    torch.manual_seed(0)
    classifier = torchvision_model("resnet18").float().to(CUDA)
    classifier.fc = torch.nn.Linear(512, 3).to(CUDA)
    options = {"config": ExplainerHyperparameters(lr=1e-2), "show_progress": False, "seed": 1}
    whole = explainer()
    torch.cuda.manual_seed(3)
    whole.fit(classifier.eval(), loader(), epochs=2, **options)
    first, checkpoint = explainer(), tmp_path / "run.ckpt"
    torch.cuda.manual_seed(3)
    first.fit(classifier.eval(), loader(), epochs=1, checkpoint=checkpoint, **options)
    resumed = explainer()
    torch.cuda.manual_seed(11)  # another state: the checkpoint's must be restored
    resumed.fit(classifier.eval(), loader(), epochs=2, resume=checkpoint, **options)
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=1e-4, atol=1e-5)
