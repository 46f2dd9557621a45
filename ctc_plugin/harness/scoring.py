"""Scoring one method variant on one model: its maps, their metrics and the robustness subset.

`score_variant` explains every image of the benchmark's data with one
[`Variant`][ctc_plugin.harness.benchmark.Variant] and scores the maps: localisation against
the evidence masks, pixel and segment deletion/insertion curves, the cost per image, and on
the first ``robustness_images`` the CTC protocol, input invariance, max-sensitivity and the
cascading-randomisation sanity check. [`BenchmarkJob`][ctc_plugin.harness.benchmark.BenchmarkJob]
runs it once per piece.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ctc_plugin.ctc.workspace import SPARE_CHUNKS
from ctc_plugin.evaluation.arguments import Method, predict
from ctc_plugin.evaluation.faithfulness import PerturbationCurve, perturbation_curve
from ctc_plugin.evaluation.invariance import input_invariance
from ctc_plugin.evaluation.localisation import (
    binarize,
    f1,
    iou,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)
from ctc_plugin.evaluation.protocol import run_protocol, welch_test
from ctc_plugin.evaluation.sanity import cascading_randomisation
from ctc_plugin.evaluation.sensitivity import max_sensitivity, measure_cost
from ctc_plugin.features.cache import image_digest
from ctc_plugin.harness.methods import peer_methods
from ctc_plugin.harness.report import COLUMNS, finite_mean

if TYPE_CHECKING:  # pragma: no cover
    from ctc_plugin.harness.benchmark import BenchmarkConfig, Variant

#: The per-image columns of ``per_image.csv`` that `score_variant` fills.
PER_IMAGE = list(COLUMNS)[:11]


def feature_makers(model: nn.Module) -> dict[str, Callable[..., Tensor]]:
    """Superpixels, and the published relevance-guided selection on top of them.

    The selection's LRP-alpha1-beta0 heatmap comes from the registry's Zennit entry, which runs
    on a copy of the model and checks its BatchNorm canonization (see `methods`); a
    transformer's comes from AttnLRP (Zennit has no rule for attention).
    """
    from ctc_plugin.features import SuperpixelSegmenter, select_features

    superpixels = SuperpixelSegmenter()
    peers = {spec.name: spec for spec in peer_methods()}
    lrp = peers["LRP-alpha1beta0"]
    if not lrp.applies_to(model):  # a transformer: its LRP is AttnLRP
        if "AttnLRP" not in peers:
            raise ValueError(
                "the 'selected' features of a transformer need AttnLRP relevance: install lxt "
                "(pip install lxt, or the extra: pip install '.[bench]' in the package's "
                "clone), or leave 'selected' out of --features"
            )
        lrp = peers["AttnLRP"]
    lrp = lrp.fn

    def selected(images: Tensor, targets: Tensor | None = None) -> Tensor:
        if targets is None:  # perturbed images: explain the predicted class
            targets = predict(model, images)
        relevance = lrp(model, images, targets, None)
        return select_features(superpixels(images), images, relevance, target=targets).mask

    return {"superpixel": _by_content(superpixels), "selected": _by_content(selected)}


def _by_content(segmenter: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``segmenter`` remembering its answers by the bytes of its inputs.

    The protocol re-segments the same perturbed images (its noise is seeded) for every
    variant that uses the same features; each is segmented once per model this way.
    """
    answers: dict[str, Tensor] = {}

    def segment(images: Tensor, targets: Tensor | None = None) -> Tensor:
        key = image_digest(images.detach().cpu().numpy())
        if targets is not None:
            key += "/" + ",".join(str(int(t)) for t in targets)
        if key not in answers:
            answers[key] = segmenter(images) if targets is None else segmenter(images, targets)
        return answers[key].clone()

    return segment


def _localisation(maps: Tensor, evidence: Tensor) -> dict[str, Tensor]:
    thresholded = binarize(maps, 0.5)
    return {
        "pointing": pointing_game(maps, evidence),
        "mass": relevance_mass_accuracy(maps, evidence),
        "rank": relevance_rank_accuracy(maps, evidence),
        "iou": iou(thresholded, evidence),
        "f1": f1(thresholded, evidence),
    }


def _faithfulness(
    model: nn.Module, images: Tensor, labels: Tensor, maps: Tensor, segments: Tensor, steps: int
) -> tuple[dict[str, Tensor], dict[str, np.ndarray]]:
    def curve(mode: str, order: str = "morf", mask: Tensor | None = None) -> PerturbationCurve:
        return perturbation_curve(
            model, images, labels, maps, mode, order, feature_mask=mask, steps=steps
        )

    deletion, insertion = curve("deletion"), curve("insertion")
    scores = {
        "deletion_px": deletion.auc(),
        "insertion_px": insertion.auc(),
        "deletion_seg": curve("deletion", mask=segments).auc(),
        "insertion_seg": curve("insertion", mask=segments).auc(),
    }
    return scores, {"deletion": deletion.scores.numpy(), "insertion": insertion.scores.numpy()}


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall-clock seconds of the block to ``timings[key]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - started


def _reusing(
    fn: Method, model: nn.Module, images: Tensor, labels: Tensor, mask: Tensor | None, maps: Tensor
) -> Method:
    """``fn``, except that explaining ``images`` for ``model`` again returns ``maps``.

    Every robustness metric first explains the unperturbed images with the original model;
    the per-image pass already did exactly that, so those calls reuse its maps.
    """

    def method(
        candidate: nn.Module, inputs: Tensor, target: Tensor, feature_mask: Tensor | None
    ) -> Tensor:
        same = (
            candidate is model
            and inputs.shape == images.shape
            and torch.equal(inputs, images)
            and torch.equal(target.long(), labels.long())
            and (feature_mask is mask or (mask is not None and torch.equal(feature_mask, mask)))
        )
        return maps.clone() if same else fn(candidate, inputs, target, feature_mask)

    method.__name__ = getattr(fn, "__name__", "method")
    return method


def _robustness(
    variant: Variant,
    model: nn.Module,
    data: dict[str, Tensor],
    features: Tensor | None,
    makers: dict[str, Callable[[Tensor], Tensor]],
    config: BenchmarkConfig,
    maps: Tensor,
    timings: dict[str, float],
) -> dict[str, float]:
    fn, images, labels, mask = robustness_inputs(variant, model, data, features, config, maps)
    segmenter = None
    if config.resegment and variant.features in makers:
        segmenter = makers[variant.features]
    with _timed(timings, "protocol"):
        results = run_protocol(
            fn, model, images, labels, mask, config.perturbations, segmenter=segmenter
        )
    protocol = welch_test(results)
    with _timed(timings, "invariance"), _modified_copies_explained():
        invariance = input_invariance(fn, model, images, labels, mask, shift=config.input_shift)
    with _timed(timings, "sensitivity"):
        sensitivity = max_sensitivity(
            fn, model, images, labels, mask, n_samples=config.sensitivity_samples
        )
    with _timed(timings, "sanity"):
        rho = sanity_rho(fn, model, images, labels, mask, config)
    return {
        "dist_kept": protocol.mean_kept,
        "dist_changed": protocol.mean_changed,
        "welch_t": protocol.statistic,
        "input_shift": float(invariance.differences.mean()),
        "max_sens": float(sensitivity.mean()),
        "sanity_rho": rho,
    }


def robustness_inputs(
    variant: Variant,
    model: nn.Module,
    data: dict[str, Tensor],
    features: Tensor | None,
    config: BenchmarkConfig,
    maps: Tensor,
) -> tuple[Method, Tensor, Tensor, Tensor | None]:
    """The robustness subset (the first ``robustness_images``) and the method it calls.

    The method reuses ``maps`` (the per-image pass's maps, at least the subset's) for the
    unperturbed images.
    """
    n = config.robustness_images
    images, labels = data["images"][:n], data["labels"][:n]
    mask = None if features is None else features[:n]
    return _reusing(variant.spec.fn, model, images, labels, mask, maps[:n]), images, labels, mask


@contextmanager
def _modified_copies_explained() -> Iterator[None]:
    """Explain modified copies of the model (shifted, randomised) without the Explainer's warning.

    The invariance and sanity checks give a trained Explainer copies of its classifier with other
    weights on purpose; its `ClassifierMismatchWarning` would only repeat that for every step.
    """
    from ctc_plugin.explainer.attribution import ClassifierMismatchWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClassifierMismatchWarning)
        yield


def sanity_rho(
    fn: Method,
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    mask: Tensor | None,
    config: BenchmarkConfig,
) -> float:
    """The ``sanity_rho`` column: mean rho of the last explained randomisation step."""
    with _modified_copies_explained():
        sanity = cascading_randomisation(
            fn, model, images, labels, mask, max_steps=config.sanity_steps
        )
    return finite_mean(sanity[-1].correlation.numpy())


def score_variant(
    variant: Variant,
    model: nn.Module,
    data: dict[str, Tensor],
    features: Tensor | None,
    segments: Tensor,
    makers: dict[str, Callable[[Tensor], Tensor]],
    config: BenchmarkConfig,
    bar: Any,
    timings: dict[str, float],
) -> tuple[list[dict[str, float]], dict[str, float], dict[str, np.ndarray]]:
    """Explain and score every image, then the robustness subset: rows, summary, curves.

    ``timings`` receives the seconds spent per stage (warm-up, explanations, localisation,
    curves, and each robustness metric).
    """
    n = len(data["images"])
    per_image: dict[str, list[np.ndarray]] = defaultdict(list)
    curves: dict[str, list[np.ndarray]] = defaultdict(list)
    explanations: list[Tensor] = []
    with _timed(timings, "warmup"):
        warm_up(variant, model, data, features)
    for start in range(0, n, config.batch_size):
        part = slice(start, start + config.batch_size)
        images, labels = data["images"][part], data["labels"][part]
        mask = None if features is None else features[part]
        with _timed(timings, "explain"):
            maps, cost = _cost_of_the_call(variant.spec.fn, model, images, labels, mask)
        explanations.append(maps)
        with _timed(timings, "localisation"):
            scores = _localisation(maps, data["evidence"][part])
        with _timed(timings, "curves"):
            faithful, batch_curves = _faithfulness(
                model, images, labels, maps, segments[part], config.curve_steps
            )
        scores.update(faithful)
        scores["seconds"] = torch.full((len(images),), cost.seconds_per_image)
        scores["memory_mib"] = torch.full((len(images),), cost.peak_memory_mib)
        for key, value in scores.items():
            per_image[key].append(value.double().numpy())
        for key, value in batch_curves.items():
            curves[key].append(value)
        bar.update(len(images))
    columns = {key: np.concatenate(values) for key, values in per_image.items()}
    rows = [{"image": i, **{key: float(columns[key][i]) for key in PER_IMAGE}} for i in range(n)]
    summary = {key: finite_mean(columns[key]) for key in PER_IMAGE}
    if config.robustness_images:
        maps = torch.cat(explanations)
        summary.update(_robustness(variant, model, data, features, makers, config, maps, timings))
    return rows, summary, {k: np.concatenate(v) for k, v in curves.items()}


def _cost_of_the_call(
    method: Method, model: nn.Module, images: Tensor, labels: Tensor, mask: Tensor | None
) -> tuple[Tensor, Any]:
    """`measure_cost`, with the memory a method keeps between its calls let go first.

    CTC's sparse pass keeps spare chunks for its next call (`SPARE_CHUNKS`); resident after the
    warm-up and the batch before, they were in `measure_cost`'s starting level, so the call's
    use of them never counted and CTC's ``memory_mib`` came out as little as half of what its
    call needs. Let go, every method pays for the memory its call uses.
    """
    SPARE_CHUNKS.release()
    return measure_cost(method, model, images, labels, mask)


def warm_up(
    variant: Variant, model: nn.Module, data: dict[str, Tensor], features: Tensor | None
) -> None:
    """Explain the first image once, before the timed explanations.

    Imports, caches and first-call allocations are not the method's cost; the call also draws
    from the seeded generators, as every piece does first.
    """
    first_mask = None if features is None else features[:1]
    variant.spec.fn(model, data["images"][:1], data["labels"][:1], first_mask)
