"""Framework idioms that must work or refuse clearly (issue 20).

Three classes of idiom a user brings from the framework they already know:

- Quantus: the documented ``explain_func`` call, run exactly as the docs print it, under
  metrics that perturb the input (the noisy copies leave any declared value range), and what
  each segmenter does with out-of-range values;
- Zennit: ``zennit.attribution.*(model, CTCComposite(...))`` and the manual
  ``composite.context(model)`` + ``backward`` idiom, which must not return the plain gradient;
- pytorch-grad-cam: every target kind grad-cam supports, ``targets=None``, batch sizes and
  ``cam.outputs``, with clear errors for targets that cannot work.
"""

from __future__ import annotations

import re
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

try:
    import quantus
except ImportError:  # an extra (bench): its tests skip, the others here still run
    quantus = None
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_grad_cam.utils.model_targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputReST,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    RawScoresOutputTarget,
    SemanticSegmentationTarget,
    SoftmaxOutputTarget,
)
from torch import nn
from zennit.attribution import Gradient, IntegratedGradients, Occlusion, SmoothGrad
from zennit.composites import EpsilonPlusFlat, MixedComposite

import ctc_plugin.adapters.quantus as quantus_adapter
from ctc_plugin import CTC, CTCAttributor, CTCComposite, IntegrativeCAM
from ctc_plugin.adapters.gradcam import IntegrativeGradCAM
from ctc_plugin.ctc.errors import CompositeOutsideAttributorError
from ctc_plugin.features import GridSegmenter, SuperpixelSegmenter

ROOT = Path(__file__).resolve().parents[2]
EVALUATION_PAGE = ROOT / "docs" / "evaluation.md"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def tiny_classifier(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, classes),
    ).eval()


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


# ---------------------------------------------------------------------------- Quantus
def documented_quantus_block() -> str:
    """The ```python block of the 'Quantus' section of docs/evaluation.md, as printed."""
    page = EVALUATION_PAGE.read_text(encoding="utf-8")
    section = page.split("\n## Quantus\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    assert len(blocks) == 1, "the Quantus section must print exactly one ```python block"
    return blocks[0]


def quantus_batch(scale: str, n: int = 2, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Images the way users hand them to Quantus: unit range, ImageNet-normalised, 0..255."""
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(n, 3, size, size, generator=generator)
    if scale == "imagenet":
        x = (x - IMAGENET_MEAN) / IMAGENET_STD
    elif scale == "0-255":
        x = x * 255.0
    return x.numpy(), np.arange(n) % 3


def run_documented_block(
    model: nn.Module, x: np.ndarray, y: np.ndarray, metric: object | None = None
) -> np.ndarray:
    """Run the docs' block as printed; with ``metric``, only the ``metric = ...`` line differs."""
    pytest.importorskip("quantus")
    block = documented_quantus_block()
    if metric is not None:
        block, count = re.subn(r"^metric = .*$", "metric = __metric__", block, flags=re.MULTILINE)
        assert count == 1
    namespace = {"model": model, "x": x, "y": y, "__metric__": metric}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(block, "docs/evaluation.md[Quantus]", "exec"), namespace)  # noqa: S102
    return np.asarray(namespace["scores"], dtype=np.float64)


def test_the_module_docstring_prints_the_documented_call() -> None:
    block = documented_quantus_block()
    assert "quantus.MaxSensitivity" in block and "explain_func=explain_func" in block
    assert textwrap.indent(block, "    ").strip() in quantus_adapter.__doc__


@pytest.mark.parametrize("scale", ["unit", "imagenet", "0-255"])
def test_documented_quantus_call_runs_as_printed(scale: str) -> None:
    x, y = quantus_batch(scale)
    scores = run_documented_block(tiny_classifier(), x, y)
    assert scores.shape == (len(x),) and np.isfinite(scores).all()


METRICS: dict[str, Callable[[], object]] = {
    "AvgSensitivity": lambda: quantus.AvgSensitivity(nr_samples=3, disable_warnings=True),
    "LocalLipschitzEstimate": lambda: quantus.LocalLipschitzEstimate(
        nr_samples=3, disable_warnings=True
    ),
    "MaxSensitivity-strong-noise": lambda: quantus.MaxSensitivity(
        nr_samples=3, lower_bound=0.5, disable_warnings=True
    ),
    "FaithfulnessCorrelation": lambda: quantus.FaithfulnessCorrelation(
        nr_runs=5, subset_size=16, disable_warnings=True
    ),
}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_documented_call_runs_other_perturbing_metrics(name: str) -> None:
    x, y = quantus_batch("unit")
    scores = run_documented_block(tiny_classifier(), x, y, metric=METRICS[name]())
    assert scores.size >= 1 and np.isfinite(scores).all()


# ---------------------------------------------------------------------------- segmenters
@settings(max_examples=25)
@given(
    scale=st.sampled_from([1.0, 255.0, -3.0, 1e6]),
    shift=st.sampled_from([0.0, -0.4, 2.0]),
    channels=st.sampled_from([1, 3, 4]),
    poison=st.sampled_from([None, float("nan"), float("inf"), -float("inf")]),
    cells=st.sampled_from([1, 2, 3, (2, 5)]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.uint8]),
)
def test_grid_segmenter_reads_only_the_shape(scale, shift, channels, poison, cells, dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, channels, 9, 11, generator=generator) * scale + shift
    if poison is not None:
        images[1, 0, 4, 4] = poison
    if dtype == torch.uint8:
        images = images.nan_to_num(0.0).clamp(0, 255).to(torch.uint8)
    else:
        images = images.to(dtype)
    segmenter = GridSegmenter(cells)
    mask = segmenter(images)
    reference = segmenter(torch.zeros(1, 3, 9, 11))
    assert mask.dtype == torch.int64 and mask.shape == (2, 1, 9, 11)
    assert torch.equal(mask, reference.expand_as(mask))
    rows, cols = (cells, cells) if isinstance(cells, int) else cells
    assert mask.unique().tolist() == list(range(rows * cols))
    table = segmenter.segment(images).features[1]
    assert table.area.sum() == 9 * 11 and len(table) == rows * cols


def test_grid_segmenter_refuses_what_has_no_grid() -> None:
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        GridSegmenter(2)(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="empty batch"):
        GridSegmenter(2)(torch.rand(0, 3, 8, 8))
    with pytest.raises(ValueError, match="does not fit"):
        GridSegmenter(9)(torch.rand(1, 3, 8, 8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        GridSegmenter(2)(np.zeros((1, 3, 8, 8)))


OUT_OF_RANGE = {
    "noisy-unit": lambda x: x + 0.2 * torch.randn(x.shape, generator=torch.Generator()),
    "imagenet-normalised": lambda x: (x - IMAGENET_MEAN) / IMAGENET_STD,
    "0-255": lambda x: x * 255.0,
    "negative": lambda x: x - 1.0,
}


@pytest.mark.parametrize("case", sorted(OUT_OF_RANGE))
def test_value_reading_segmenters_refuse_out_of_range_by_name(case: str) -> None:
    images = OUT_OF_RANGE[case](torch.rand(2, 3, 16, 16, generator=torch.Generator()))
    for method in ("slic", "felzenszwalb"):
        with pytest.raises(ValueError, match=r"image values lie in .* value_range=\(0\.0, 1\.0\)"):
            SuperpixelSegmenter(method)(images)
        assert SuperpixelSegmenter(method, value_range="auto")(images).shape == (2, 1, 16, 16)
    assert GridSegmenter(4)(images).shape == (2, 1, 16, 16)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_value_reading_segmenters_refuse_non_finite(bad: float) -> None:
    images = torch.rand(1, 3, 16, 16)
    images[0, 1, 3, 3] = bad
    for segmenter in (SuperpixelSegmenter(), SuperpixelSegmenter(value_range="auto")):
        with pytest.raises(ValueError, match="NaN or infinite"):
            segmenter(images)


def test_sam_segmenter_refuses_out_of_range_before_running_sam() -> None:
    pytest.importorskip("segment_anything")
    from ctc_plugin.adapters.sam import SAMSegmenter, build_tiny_sam

    segmenter = SAMSegmenter(model=build_tiny_sam(), model_type="tiny", cache=None)
    images = torch.rand(1, 3, 16, 16) * 255.0
    with pytest.raises(ValueError, match=r"value_range=\(0, 255\)"):
        segmenter(images)


# ---------------------------------------------------------------------------- Zennit
def zennit_net(seed: int = 0) -> nn.Module:
    """Modules only (every rule in a hook), with BatchNorm, max-pool and a smooth activation."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(20, 3),
    ).double()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


def grid(size: int = 8, cells: int = 2) -> torch.Tensor:
    return GridSegmenter(cells)(torch.zeros(1, 3, size, size))


def manual_backward(model: nn.Module, composite, x: torch.Tensor, one_hot: torch.Tensor):
    """Zennit's manual idiom: forward inside the context, then backward the output weighting."""
    x = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        output = modified(x)
        output.backward(one_hot)
    return output, x.grad


GRADIENT_IDIOMS: dict[str, Callable] = {
    "Gradient": lambda m, c, x, w: Gradient(m, c)(x, w),
    "SmoothGrad": lambda m, c, x, w: SmoothGrad(m, c, n_iter=2, noise_level=0.1)(x, w),
    "IntegratedGradients": lambda m, c, x, w: IntegratedGradients(m, c, n_iter=3)(x, w),
    "with-statement": lambda m, c, x, w: _with_statement(Gradient(m, c), x, w),
    "context-backward": manual_backward,
}


def _with_statement(attributor, x, w):
    with attributor:
        return attributor(x, w)


@pytest.mark.parametrize("mode", ["reference", "proportional", "none"])
@pytest.mark.parametrize("idiom", sorted(GRADIENT_IDIOMS))
def test_zennit_gradient_attributors_with_ctc_composite_refuse(idiom: str, mode: str) -> None:
    model = zennit_net()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    one_hot = torch.eye(3, dtype=torch.float64)[[1, 2]]
    before = model(x).detach()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    composite = CTCComposite(bias_sharing=mode)
    with pytest.raises(CompositeOutsideAttributorError, match=r"CTCAttributor\(model, composite"):
        GRADIENT_IDIOMS[idiom](model, composite, x, one_hot)
    # the model is left as it was: no hooks, same parameters, same output
    assert hook_count(model) == 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(model(x), before)
    # the idiom the error names gives the CTC relevance
    _, relevance = CTCAttributor(model, composite, feature_mask=grid())(x, one_hot)
    for row, target in enumerate([1, 2]):
        expected = CTC(model, bias_sharing=mode).attribute(
            x[row : row + 1], target, feature_mask=grid()
        )
        torch.testing.assert_close(relevance[row : row + 1], expected, rtol=1e-9, atol=1e-12)


def test_mixed_composite_with_ctc_refuses_gradient_too() -> None:
    model = zennit_net()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    composite = MixedComposite([CTCComposite(), EpsilonPlusFlat()])
    with pytest.raises(CompositeOutsideAttributorError, match="plain gradient"):
        Gradient(model, composite)(x, torch.eye(3, dtype=torch.float64)[[0]])
    assert hook_count(model) == 0


def test_zennit_occlusion_ignores_the_composite_as_documented_by_zennit() -> None:
    model = zennit_net()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    one_hot = torch.eye(3, dtype=torch.float64)[[0, 2]]
    _, with_ctc = Occlusion(model, CTCComposite(), window=4, stride=4)(x, one_hot)
    _, plain = Occlusion(model, window=4, stride=4)(x, one_hot)
    torch.testing.assert_close(with_ctc, plain)
    assert hook_count(model) == 0


def test_plain_forward_and_gradient_free_use_are_untouched() -> None:
    model = zennit_net()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    expected = model(x).detach()
    composite = CTCComposite()
    with composite.context(model) as modified:
        torch.testing.assert_close(modified(x), expected)  # forward with autograd on
        with torch.no_grad():
            torch.testing.assert_close(modified(x), expected)
        with composite.inactive():  # Zennit's way to switch the rules off: plain gradient
            leaf = x.clone().requires_grad_(True)
            modified(leaf)[:, 0].sum().backward()
    plain = x.clone().requires_grad_(True)
    model(plain)[:, 0].sum().backward()
    torch.testing.assert_close(leaf.grad, plain.grad)


def test_within_feature_gradients_run_after_the_ctc_composite_is_removed() -> None:
    from captum.attr import Saliency

    from ctc_plugin import distribute_within_features

    model = zennit_net()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    one_hot = torch.eye(3, dtype=torch.float64)[[1]]
    with CTCAttributor(model, CTCComposite(), feature_mask=grid()) as attributor:
        attributor(x, one_hot)
        with pytest.raises(CompositeOutsideAttributorError, match="outside the `with"):
            distribute_within_features(x, attributor.feature_scores, Saliency(model))
    relevance = distribute_within_features(x, attributor.feature_scores, Saliency(model))
    scores = CTC(model).attribute(x, 1, feature_mask=grid())
    mask = grid()[0, 0]
    for feature in mask.unique():  # each feature's relevance still adds up to its score
        inside = (mask == feature).expand_as(x[0])
        total = relevance[0][inside].sum()
        torch.testing.assert_close(total, scores[0][inside][0], rtol=1e-6, atol=1e-9)
    assert hook_count(model) == 0


# ---------------------------------------------------------------------------- pytorch-grad-cam
MULTI_CLASS_TARGETS: dict[str, Callable[[int], object]] = {
    "ClassifierOutputTarget": ClassifierOutputTarget,
    "ClassifierOutputSoftmaxTarget": ClassifierOutputSoftmaxTarget,
    "ClassifierOutputReST": ClassifierOutputReST,
    "callable": lambda c: lambda row: row[c] - row.mean(),
}


@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("kind", sorted(MULTI_CLASS_TARGETS))
def test_gradcam_targets_batches_and_outputs(kind: str, batch: int) -> None:
    model = tiny_classifier(seed=batch)
    x = torch.rand(batch, 3, 12, 12, generator=torch.Generator().manual_seed(batch))
    classes = [i % 3 for i in range(batch)]
    targets = [MULTI_CLASS_TARGETS[kind](c) for c in classes]
    with IntegrativeGradCAM(model) as cam:
        assert cam.outputs is None
        maps = cam(input_tensor=x, targets=targets)
        torch.testing.assert_close(cam.outputs, model(x).detach())
    assert maps.dtype == np.float32 and maps.shape == (batch, 12, 12)
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    expected = IntegrativeCAM(model).attribute(x, target=targets)[:, 0].numpy()
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    if kind == "ClassifierOutputTarget":
        by_index = IntegrativeCAM(model).attribute(x, target=classes)[:, 0].numpy()
        np.testing.assert_allclose(maps, by_index, atol=1e-6)
    assert hook_count(model) == 0


@pytest.mark.parametrize("batch", [1, 3])
def test_gradcam_no_targets_means_the_top_class(batch: int) -> None:
    model = tiny_classifier(seed=3)
    x = torch.rand(batch, 3, 12, 12, generator=torch.Generator().manual_seed(9))
    with IntegrativeGradCAM(model) as cam:
        maps = cam(input_tensor=x, targets=None)
        outputs = cam.outputs
    top = outputs.argmax(dim=1).tolist()
    with IntegrativeGradCAM(model) as cam:
        chosen = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in top])
    np.testing.assert_allclose(maps, chosen, atol=1e-6)


def single_output_model() -> nn.Module:
    return tiny_classifier(seed=4, classes=1)


@pytest.mark.parametrize("batch", [1, 3])
def test_gradcam_single_output_targets(batch: int) -> None:
    model = single_output_model()
    x = torch.rand(batch, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    runs = {}
    for name, targets in {
        "raw": [RawScoresOutputTarget()] * batch,
        "positive": [BinaryClassifierOutputTarget(1)] * batch,
        "negative": [BinaryClassifierOutputTarget(0)] * batch,
        "index": [ClassifierOutputTarget(0)] * batch,
        "none": None,
    }.items():
        with IntegrativeGradCAM(model) as cam:
            runs[name] = cam(input_tensor=x, targets=targets)
            assert cam.outputs.shape == (batch, 1)
        assert runs[name].shape == (batch, 12, 12) and np.isfinite(runs[name]).all()
    for name in ("positive", "index", "none"):
        np.testing.assert_allclose(runs[name], runs["raw"], atol=1e-6)
    negated = IntegrativeCAM(model).attribute(x, target=[lambda row: -row[0]] * batch)
    np.testing.assert_allclose(runs["negative"], negated[:, 0].numpy(), atol=1e-6)


REFUSED: dict[str, tuple[Callable[[], object], str]] = {
    "RawScoresOutputTarget": (RawScoresOutputTarget, r"returned shape \(3,\).*one score"),
    "SoftmaxOutputTarget": (SoftmaxOutputTarget, r"returned shape \(3,\).*one score"),
    "BinaryClassifierOutputTarget": (
        lambda: BinaryClassifierOutputTarget(1),
        r"BinaryClassifierOutputTarget returned shape \(3,\).*ClassifierOutputTarget\(class\)",
    ),
    "class-out-of-range": (lambda: ClassifierOutputTarget(7), r"failed on example 0.*index 7"),
    "SemanticSegmentationTarget": (
        lambda: SemanticSegmentationTarget(1, np.ones((12, 12), dtype=np.float32)),
        r"SemanticSegmentationTarget failed on example 0's output of shape \(3,\)",
    ),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_gradcam_targets_that_cannot_work_are_clear_errors(kind: str) -> None:
    model = tiny_classifier()
    make, message = REFUSED[kind]
    with IntegrativeGradCAM(model) as cam:
        with pytest.raises(ValueError, match=message):
            cam(input_tensor=torch.rand(2, 3, 12, 12), targets=[make(), make()])
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    ("count", "message"),
    [(0, "got 0 targets for 2 images"), (1, "got 1 target for 2 images"), (3, "got 3 targets")],
)
def test_gradcam_wrong_number_of_targets(count: int, message: str) -> None:
    with IntegrativeGradCAM(tiny_classifier()) as cam:
        with pytest.raises(ValueError, match=message):
            cam(input_tensor=torch.rand(2, 3, 12, 12), targets=[ClassifierOutputTarget(0)] * count)
