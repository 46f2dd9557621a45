"""The side-by-side benchmark: every method, on the zoo models and both data splits.

`run_benchmark` explains the same images with every method of `ctc_plugin.evaluation.methods`
(feature-based methods once per feature source), scores them with this package's metrics and
writes, under an output folder:

* ``per_image.csv``: one row per image, model and method (localisation, faithfulness, cost);
* ``results.csv``: one row per model, split and method, with means and the robustness metrics
  (CTC protocol, input invariance, max-sensitivity, sanity check) on a subset of the images;
* ``results.md``: Markdown tables of the means over all models and per split, plus the model
  accuracies, the configuration and any method that failed;
* ``curves.png`` (mean MoRF deletion and insertion curves) and ``invariance_sensitivity.png``
  (protocol distance when the prediction is kept vs when it changes).

Explanations are for the true label of each image. Feature sources: ``oracle`` (the data set's
object instances), ``superpixel`` (`ctc_plugin.features.SuperpixelSegmenter`) and ``selected``
(`ctc_plugin.features.select_features` on the superpixels, the published relevance-guided
selection). Segment-level curves always use the superpixels, so all methods share them.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ctc_plugin.evaluation._inputs import predict
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
from ctc_plugin.evaluation.methods import MethodSpec, peer_methods, registry
from ctc_plugin.evaluation.protocol import DEFAULT_PERTURBATIONS, run_protocol, welch_test
from ctc_plugin.evaluation.report import COLUMNS, ModelRun, finite_mean, write_report
from ctc_plugin.evaluation.sanity import cascading_randomisation
from ctc_plugin.evaluation.sensitivity import max_sensitivity, measure_cost

__all__ = ["BenchmarkConfig", "Variant", "run_benchmark", "machine_description"]

FEATURE_SOURCES = ("oracle", "superpixel", "selected")

PER_IMAGE = list(COLUMNS)[:11]


@dataclass(frozen=True)
class BenchmarkConfig:
    """What the benchmark runs.

    Attributes:
        families: Zoo model families.
        splits: Data splits (each family's model trained on that split is used).
        images: Images per split (the same images for every model and method).
        robustness_images: The first this many images also get the protocol, input invariance,
            max-sensitivity and sanity metrics (they call a method many times).
        feature_sources: Features given to feature-based methods, each a separate row.
        methods: Method names to run (see ``registry()``); ``None`` runs every available one.
        lime_samples: Samples for Lime and KernelShap.
        ig_steps: Steps of IntegratedGradients.
        curve_steps: Points of the pixel deletion/insertion curves (minus one).
        batch_size: Images explained per call.
        seed: Data set seed (the zoo trained on seed 0; any other seed is held-out data).
        image_size: Side of the images.
        sensitivity_samples: Noise samples for max-sensitivity.
        sanity_steps: Explanations along the randomisation cascade (the last one has every
            layer randomised; only that one is reported).
        resegment: Re-segment perturbed images in the protocol (superpixel/selected features).
        input_shift: Constant shift of the input-invariance test.
        perturbations: ``(kind, severity)`` pairs of the CTC protocol.
    """

    families: tuple[str, ...] = ("vgg", "resnet", "densenet", "inception")
    splits: tuple[str, ...] = ("shapes", "composite")
    images: int = 200
    robustness_images: int = 24
    feature_sources: tuple[str, ...] = FEATURE_SOURCES
    methods: tuple[str, ...] | None = None
    lime_samples: int = 100
    ig_steps: int = 32
    curve_steps: int = 20
    batch_size: int = 25
    seed: int = 2026
    image_size: int = 96
    sensitivity_samples: int = 4
    sanity_steps: int = 1
    resegment: bool = True
    input_shift: float = -0.5
    perturbations: tuple[tuple[str, str | float], ...] = DEFAULT_PERTURBATIONS

    @classmethod
    def quick(cls) -> BenchmarkConfig:
        """A configuration that finishes in a few minutes on two CPU cores."""
        return cls(
            families=("resnet",),
            images=6,
            robustness_images=2,
            feature_sources=("superpixel",),
            lime_samples=50,
            ig_steps=16,
            curve_steps=10,
            sensitivity_samples=2,
        )

    def __post_init__(self) -> None:
        unknown = set(self.feature_sources) - set(FEATURE_SOURCES)
        if unknown:
            raise ValueError(f"unknown feature sources {sorted(unknown)}; use {FEATURE_SOURCES}")
        if self.images < 1 or self.batch_size < 1:
            raise ValueError("images and batch_size must be positive")
        if not 0 <= self.robustness_images <= self.images:
            raise ValueError("robustness_images must lie between 0 and images")


@dataclass(frozen=True)
class Variant:
    """A method with its feature source (``None`` for methods without features)."""

    spec: MethodSpec
    features: str | None

    @property
    def label(self) -> str:
        """Row label, e.g. ``"CTC-reference [superpixel]"``."""
        return self.spec.name if self.features is None else f"{self.spec.name} [{self.features}]"


def _variants(specs: Iterable[MethodSpec], sources: Sequence[str]) -> list[Variant]:
    out = []
    for spec in specs:
        if spec.uses_features:
            out += [Variant(spec, source) for source in sources]
        else:
            out.append(Variant(spec, None))
    return out


def _load_data(split: str, config: BenchmarkConfig) -> dict[str, Tensor]:
    from ctc_plugin.datasets import ShapesDataset

    data = ShapesDataset(split, size=config.images, seed=config.seed, image_size=config.image_size)
    items = [data[i] for i in range(len(data))]
    return {
        "images": torch.stack([item["image"] for item in items]),
        "labels": torch.tensor([int(item["label"]) for item in items]),
        "evidence": torch.stack([item["evidence"] for item in items]),
        "instances": torch.stack([item["instances"] for item in items])[:, None].long(),
    }


def _feature_makers(model: nn.Module) -> dict[str, Callable[..., Tensor]]:
    """Superpixels, and the published relevance-guided selection on top of them.

    The selection's LRP-alpha1-beta0 heatmap comes from the registry's Zennit entry, which runs
    on a copy of the model and checks its BatchNorm canonization (see `methods`).
    """
    from ctc_plugin.features import SuperpixelSegmenter, select_features

    superpixels = SuperpixelSegmenter()
    lrp = {spec.name: spec for spec in peer_methods()}["LRP-alpha1beta0"].fn

    def selected(images: Tensor, targets: Tensor | None = None) -> Tensor:
        if targets is None:  # perturbed images: explain the predicted class
            targets = predict(model, images)
        relevance = lrp(model, images, targets, None)
        return select_features(superpixels(images), images, relevance, target=targets)

    return {"superpixel": superpixels, "selected": selected}


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


def _robustness(
    variant: Variant,
    model: nn.Module,
    data: dict[str, Tensor],
    features: Tensor | None,
    makers: dict[str, Callable[[Tensor], Tensor]],
    config: BenchmarkConfig,
) -> dict[str, float]:
    n = config.robustness_images
    images, labels = data["images"][:n], data["labels"][:n]
    mask = None if features is None else features[:n]
    fn = variant.spec.fn
    segmenter = None
    if config.resegment and variant.features in makers:
        segmenter = makers[variant.features]
    results = run_protocol(
        fn, model, images, labels, mask, config.perturbations, segmenter=segmenter
    )
    protocol = welch_test(results)
    invariance = input_invariance(fn, model, images, labels, mask, shift=config.input_shift)
    sensitivity = max_sensitivity(
        fn, model, images, labels, mask, n_samples=config.sensitivity_samples
    )
    sanity = cascading_randomisation(fn, model, images, labels, mask, max_steps=config.sanity_steps)
    return {
        "dist_kept": protocol.mean_kept,
        "dist_changed": protocol.mean_changed,
        "welch_t": protocol.statistic,
        "input_shift": float(invariance.differences.mean()),
        "max_sens": float(sensitivity.mean()),
        "sanity_rho": finite_mean(sanity[-1].correlation.numpy()),
    }


def _run_variant(
    variant: Variant,
    model: nn.Module,
    data: dict[str, Tensor],
    features: Tensor | None,
    segments: Tensor,
    makers: dict[str, Callable[[Tensor], Tensor]],
    config: BenchmarkConfig,
    run: ModelRun,
    bar: tqdm,
) -> None:
    n = len(data["images"])
    per_image: dict[str, list[np.ndarray]] = defaultdict(list)
    curves: dict[str, list[np.ndarray]] = defaultdict(list)
    # warm-up on one image: imports, caches and first-call allocations are not the method's cost
    first_mask = None if features is None else features[:1]
    variant.spec.fn(model, data["images"][:1], data["labels"][:1], first_mask)
    for start in range(0, n, config.batch_size):
        part = slice(start, start + config.batch_size)
        images, labels = data["images"][part], data["labels"][part]
        mask = None if features is None else features[part]
        maps, cost = measure_cost(variant.spec.fn, model, images, labels, mask)
        scores = _localisation(maps, data["evidence"][part])
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
    for i in range(n):
        row = {"family": run.family, "split": run.split, "method": variant.label, "image": i}
        row.update({key: float(columns[key][i]) for key in PER_IMAGE})
        run.rows.append(row)
    summary = {"family": run.family, "split": run.split, "method": variant.label}
    summary.update({key: finite_mean(columns[key]) for key in PER_IMAGE})
    if config.robustness_images:
        summary.update(_robustness(variant, model, data, features, makers, config))
    run.summary.append(summary)
    run.curves[variant.label] = {k: np.concatenate(v) for k, v in curves.items()}


def _model_and_explainer(family: str, split: str) -> tuple[nn.Module, nn.Module | None]:
    from ctc_plugin import zoo

    model = zoo.load(family, split)
    try:
        explainer = zoo.load_explainer(family, split)
    except (FileNotFoundError, ValueError, ImportError):
        explainer = None
    return model, explainer


def run_benchmark(
    config: BenchmarkConfig,
    out_dir: str | Path,
    models: Mapping[tuple[str, str], nn.Module] | None = None,
    show_progress: bool = True,
) -> list[dict[str, object]]:
    """Run the benchmark and write its CSV files, Markdown tables and plots to ``out_dir``.

    Args:
        config: What to run.
        out_dir: Output folder (created if missing).
        models: ``{(family, split): model}`` to use instead of the zoo (for tests and for your
            own models); the Explainer is then left out.
        show_progress: Draw tqdm progress bars.

    Returns:
        The summary rows (one per model, split and method), as written to ``results.csv``.

    Raises:
        FileNotFoundError: When no model can be loaded. A single missing zoo weight file only
            skips that model, with a warning and a line under "Failures" in ``results.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    runs: list[ModelRun] = []
    skipped: list[str] = []
    datasets: dict[str, dict[str, Tensor]] = {}
    pairs = [(family, split) for split in config.splits for family in config.families]
    for family, split in tqdm(pairs, desc="models", disable=not show_progress):
        if models is not None:
            model, explainer = models[(family, split)], None
        else:
            try:
                model, explainer = _model_and_explainer(family, split)
            except FileNotFoundError as error:  # reported in results.md and on stderr
                skipped.append(f"{family}/{split}: model skipped: {error}")
                print(f"warning: {skipped[-1]}", file=sys.stderr)
                continue
        model.eval()
        if split not in datasets:
            datasets[split] = _load_data(split, config)
        data = datasets[split]
        with torch.no_grad():
            predicted = model(data["images"]).argmax(dim=1)
        run = ModelRun(family, split, float((predicted == data["labels"]).double().mean()))
        makers = _feature_makers(model)
        segments = makers["superpixel"](data["images"])
        sources = {"oracle": data["instances"], "superpixel": segments}
        if "selected" in config.feature_sources:
            sources["selected"] = makers["selected"](data["images"], data["labels"])
        methods = registry(explainer, n_samples=config.lime_samples, ig_steps=config.ig_steps)
        if config.methods is not None:
            missing = set(config.methods) - set(methods)
            if missing - {"Explainer"}:
                raise ValueError(f"unknown methods {sorted(missing)}; available: {list(methods)}")
            if missing:
                run.errors.append(f"{family}/{split} Explainer: no trained Explainer found")
            methods = {name: methods[name] for name in config.methods if name in methods}
        variants = _variants(methods.values(), config.feature_sources)
        bar = tqdm(
            total=len(variants) * config.images,
            desc=f"{family}/{split}",
            leave=False,
            disable=not show_progress,
        )
        for variant in variants:
            bar.set_postfix_str(variant.label)
            features = None if variant.features is None else sources[variant.features]
            try:
                _run_variant(variant, model, data, features, segments, makers, config, run, bar)
            except Exception as error:  # a failing method is reported, not hidden
                first_line = str(error).splitlines()[0] if str(error) else ""
                run.errors.append(
                    f"{family}/{split} {variant.label}: {type(error).__name__}: {first_line}"
                )
        bar.close()
        runs.append(run)
    if not runs:
        raise FileNotFoundError("no model could be loaded: " + "; ".join(skipped))
    elapsed = time.perf_counter() - started
    return write_report(runs, config, out, elapsed, machine_description(), skipped)


def machine_description() -> str:
    """One line naming the machine: CPU, core count, torch version and threads."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )
