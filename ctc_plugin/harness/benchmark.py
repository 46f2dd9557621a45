"""The side-by-side benchmark: every method, on the zoo models and both data splits.

`run_benchmark` explains the same images with every method of `ctc_plugin.harness.methods`
(feature-based methods once per feature source) and scores them with this package's metrics.
It is a job of the resumable engine that ``explain-dataset`` runs on
([`BenchmarkJob`][ctc_plugin.harness.benchmark.BenchmarkJob], run by
[`run_job`][ctc_plugin.resumable.job.run_job]): each finished piece (one method variant on one
model) is stored under the output folder as one shard (`ctc_plugin.harness.store`), so a run
that stops resumes where it stopped, in this process or on Ray (``--ray``); the report is
written from the stored pieces (`ctc_plugin.harness.report.write_stored_report`, also for a
partial run):

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
import random
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ctc_plugin.evaluation.protocol import DEFAULT_PERTURBATIONS
from ctc_plugin.evaluation.sensitivity import measure_cost
from ctc_plugin.harness.methods import (
    EXPLAINER_METHODS,
    MethodSpec,
    method_names,
    registry,
)
from ctc_plugin.harness.report import write_stored_report
from ctc_plugin.harness.scoring import (
    feature_makers,
    robustness_inputs,
    sanity_rho,
    score_variant,
    warm_up,
)
from ctc_plugin.harness.store import (
    JOB,
    BenchmarkStore,
    Piece,
    piece_name,
    piece_shard,
    run_order,
)
from ctc_plugin.method_calls import SAMPLES
from ctc_plugin.resumable import Shard, json_values, run_job
from ctc_plugin.resumable.atomic import read_only_folder
from ctc_plugin.wording import known_name
from ctc_plugin.zoo.settings import FAMILIES

if TYPE_CHECKING:  # pragma: no cover - the errors run_benchmark's Raises names, for the docs' links
    from ctc_plugin.resumable import ConfigMismatchError, RayUnavailableError  # noqa: F401
    from ctc_plugin.resumable.cluster import RayConnectionError  # noqa: F401

__all__ = [
    "BenchmarkConfig",
    "BenchmarkJob",
    "BenchmarkRunner",
    "Variant",
    "run_benchmark",
    "machine_description",
]

FEATURE_SOURCES = ("oracle", "superpixel", "selected")


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
        methods: Method names to run (see ``registry()``; a name spelled otherwise in case,
            dashes and underscores, as ``explain --method`` spells it, is taken:
            ``feature-ablation``); ``None`` runs every available one.
            Their order is the order of the report's rows, so it is part of the configuration:
            a resumed run must give them in the same order (a reordered list is another
            report, refused in the same folder).
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

    families: tuple[str, ...] = FAMILIES
    splits: tuple[str, ...] = ("shapes", "composite")
    images: int = 200
    robustness_images: int = 24
    feature_sources: tuple[str, ...] = FEATURE_SOURCES
    methods: tuple[str, ...] | None = None
    lime_samples: int = SAMPLES
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
        if self.methods is not None:  # the command's spelling (feature-ablation) is taken too
            known = method_names()
            named = tuple(known_name(name, known, "method") for name in self.methods)
            object.__setattr__(self, "methods", named)
        for name in ("families", "splits", "feature_sources", "methods"):
            values = getattr(self, name) or ()
            repeated = sorted({value for value in values if values.count(value) > 1})
            if repeated:  # a model or variant run twice would count twice in every mean
                raise ValueError(f"{name} names {repeated} more than once; name each once")
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


def _sanity_only(
    variant: Variant,
    family: str,
    split: str,
    model: nn.Module,
    data: dict[str, Tensor],
    sources: dict[str, Tensor],
    config: BenchmarkConfig,
) -> float:
    """The piece's ``sanity_rho`` alone, computed as `_compute_piece` computes it.

    The piece is seeded from its name, warmed up, and the per-image pass's batches are explained
    until they cover the robustness subset (the sanity check reuses their maps as the original
    explanation); the other stages do not touch what the sanity check reads (it seeds its own
    re-initialisation), so the value equals the full piece's.
    """
    _seed_piece(config, family, split, variant.label)
    features = None if variant.features is None else sources[variant.features]
    warm_up(variant, model, data, features)
    explanations = []
    for start in range(0, config.robustness_images, config.batch_size):
        part = slice(start, start + config.batch_size)
        mask = None if features is None else features[part]
        maps, _ = measure_cost(
            variant.spec.fn, model, data["images"][part], data["labels"][part], mask
        )
        explanations.append(maps)
    maps = torch.cat(explanations)
    fn, images, labels, mask = robustness_inputs(variant, model, data, features, config, maps)
    return sanity_rho(fn, model, images, labels, mask, config)


def _seed_piece(config: BenchmarkConfig, family: str, split: str, label: str) -> None:
    """Seed every generator from the piece's name, so a resumed run equals an uninterrupted one."""
    seed = zlib.crc32(f"{config.seed}/{family}/{split}/{label}".encode())
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _one_line(error: BaseException) -> str:
    """``Type: first line of the message``, for the report's "Failures" section."""
    first_line = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {first_line}"


def _compute_piece(
    variant: Variant,
    family: str,
    split: str,
    model: nn.Module,
    data: dict[str, Tensor],
    sources: dict[str, Tensor],
    makers: dict[str, Callable[[Tensor], Tensor]],
    config: BenchmarkConfig,
    bar: Any,
) -> Piece:
    """Run one variant on one model; a method that raises gives a piece holding its error."""
    _seed_piece(config, family, split, variant.label)
    features = None if variant.features is None else sources[variant.features]
    piece = Piece(family, split, variant.label, machine=machine_description())
    timings = piece.timings
    started = time.perf_counter()
    try:
        rows, summary, curves = score_variant(
            variant, model, data, features, sources["superpixel"], makers, config, bar, timings
        )
    except Exception as error:  # a failing method is reported, not hidden
        piece.error = f"{family}/{split} {variant.label}: {_one_line(error)}"
    else:
        piece.rows, piece.curves = rows, curves
        piece.summary = {"family": family, "split": split, "method": variant.label, **summary}
    piece.seconds = time.perf_counter() - started
    return piece


def _prepare_model(
    model: nn.Module,
    data: dict[str, Tensor],
    variants: list[Variant],
) -> tuple[float, dict[str, Callable[..., Tensor]], dict[str, Tensor]]:
    """The model's accuracy, its feature makers and the features its variants need."""
    model.eval()
    with torch.no_grad():
        predicted = model(data["images"]).argmax(dim=1)
    accuracy = float((predicted == data["labels"]).double().mean())
    makers = feature_makers(model)
    sources = {"oracle": data["instances"], "superpixel": makers["superpixel"](data["images"])}
    if any(variant.features == "selected" for variant in variants):
        sources["selected"] = makers["selected"](data["images"], data["labels"])
    return accuracy, makers, sources


@dataclass
class _Loaded:
    """A model, its shipped explainers by kind, and why a shipped explainer file failed to load.

    Attributes:
        model: The model.
        explainers: The explainers that loaded, by kind.
        broken: ``{kind: message}`` for each shipped explainer file that failed to load (a
            damaged file, say): a failure of the run, reported, never silently left out.
    """

    model: nn.Module
    explainers: dict[str, nn.Module] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)


def _model_and_explainers(family: str, split: str) -> _Loaded:
    """The zoo model and its shipped explainers by kind.

    A kind with no shipped file is left out; a shipped file that fails to load is recorded in
    ``broken`` with its error (and a warning on stderr).
    """
    from ctc_plugin import zoo
    from ctc_plugin.zoo.explainers import explainer_path

    loaded = _Loaded(zoo.load(family, split))
    for kind in EXPLAINER_METHODS:
        path = explainer_path(family, split, kind)
        if not path.is_file():
            continue  # not shipped: planned out with a note when asked for
        try:
            loaded.explainers[kind] = zoo.load_explainer(family, split, kind)
        except Exception as error:  # a damaged shipped file is a failure of the run
            loaded.broken[kind] = f"the shipped file {path} failed to load: {_one_line(error)}"
            name = f"{family}/{split} {EXPLAINER_METHODS[kind]}"
            print(f"warning: {name}: {loaded.broken[kind]}", file=sys.stderr)
    return loaded


def _plan(
    config: BenchmarkConfig,
    family: str,
    split: str,
    explainers: dict[str, nn.Module],
    model: nn.Module | None = None,
    broken: Mapping[str, str] | None = None,
) -> tuple[list[Variant], list[str]]:
    """The variants to run on one model, in report order, and notes for the report.

    ``broken`` (``{kind: message}``, shipped explainer files that failed to load) gives a note
    for each such explainer the run asks for (all, without ``methods``).
    """
    methods = registry(
        explainers.get("default"),
        n_samples=config.lime_samples,
        ig_steps=config.ig_steps,
        explainers={kind: e for kind, e in explainers.items() if kind != "default"},
    )
    failed = {EXPLAINER_METHODS[kind]: message for kind, message in (broken or {}).items()}
    asked = set(methods) | set(failed) if config.methods is None else set(config.methods)
    notes = [f"{family}/{split} {name}: {failed[name]}" for name in sorted(asked & set(failed))]
    if config.methods is not None:
        missing = set(config.methods) - set(methods)
        if missing - set(EXPLAINER_METHODS.values()):
            raise ValueError(f"unknown methods {sorted(missing)}; available: {list(methods)}")
        for name in sorted(missing - set(failed)):
            notes.append(f"{family}/{split} {name}: no trained explainer of that kind shipped")
        methods = {name: methods[name] for name in config.methods if name in methods}
    if model is not None:  # methods for other kinds of model (AttnLRP: transformers) are left out
        for name, spec in list(methods.items()):
            if spec.applies_to is not None and not spec.applies_to(model):
                del methods[name]
                if config.methods is not None:
                    notes.append(f"{family}/{split} {name}: does not apply to this model")
    return _variants(methods.values(), config.feature_sources), notes


def _nothing_planned(config: BenchmarkConfig, planned: list[dict[str, Any]]) -> str:
    """The error of a run that plans no piece: none of its methods applies to its models."""
    models = ", ".join(f"{entry['family']}/{entry['split']}" for entry in planned)
    notes = "; ".join(note for entry in planned for note in entry["notes"])
    methods = ", ".join(config.methods or ()) or "every method"
    return (
        f"none of the methods ({methods}) applies to these models ({models})"
        + (f": {notes}" if notes else "")
        + "; choose other --methods or --families"
    )


class _Counted:
    """A progress bar that counts what it was advanced by (the bar may be ``None``)."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.count = 0

    def update(self, count: int) -> None:
        self.count += count
        if self.bar is not None:
            self.bar.update(count)

    def set_postfix_str(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)


@dataclass
class _Prepared:
    """One model made ready for its pieces: data, features, variants, accuracy."""

    family: str
    split: str
    model: nn.Module
    data: dict[str, Tensor]
    variants: dict[str, Variant]
    accuracy: float
    makers: dict[str, Callable[..., Tensor]]
    sources: dict[str, Tensor]
    seconds: float


class BenchmarkJob:
    """The benchmark as a [`Job`][ctc_plugin.resumable.job.Job] of the resumable engine.

    Planning loads every model (to know which variants apply to it); a model whose zoo weights
    are missing is skipped with a warning (and a line under "Failures" in ``results.md``).
    Each shard is one piece, one method variant on one model, in report order (split by split,
    family by family, variant by variant), named after the piece, with the model as its
    affinity (on Ray, a model's pieces go to one worker where the plan allows); its progress
    counts the piece's images. The job is sent to Ray workers as it is: its configuration, its
    plan and the models given as ``models``, never the zoo models it loaded (a worker loads its
    own).

    Args:
        config: What to run.
        models: ``{(family, split): model}`` to use instead of the zoo (the Explainer is then
            left out).
        threads: Torch CPU threads every piece runs on (``None``: this process's count now),
            here and on every Ray worker, so that both engines give the same numbers.

    Raises:
        FileNotFoundError: When no model can be loaded.
    """

    name: ClassVar[str] = JOB
    prepare_stage: ClassVar[bool] = False

    def __init__(
        self,
        config: BenchmarkConfig,
        models: Mapping[tuple[str, str], nn.Module] | None = None,
        threads: int | None = None,
    ) -> None:
        self.config = config
        self.models = dict(models) if models is not None else None
        self.threads = threads if threads is not None else torch.get_num_threads()
        self._loaded: dict[tuple[str, str], _Loaded] = {}
        self.pieces: list[tuple[str, str, str]] = []
        self.planned: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        pairs = run_order(config.families, config.splits)
        for family, split in pairs:
            try:
                loaded = self.load(family, split)
            except FileNotFoundError as error:  # reported in results.md and on stderr
                self.skipped[f"{family}/{split}"] = f"model skipped: {error}"
                print(f"warning: {family}/{split}: model skipped: {error}", file=sys.stderr)
                continue
            variants, notes = _plan(
                config, family, split, loaded.explainers, loaded.model, loaded.broken
            )
            labels = [variant.label for variant in variants]
            self.planned.append({"family": family, "split": split, "planned": labels})
            self.planned[-1]["notes"] = notes
            self.pieces += [(family, split, label) for label in labels]
        if len(self.skipped) == len(pairs):
            raise FileNotFoundError("no model could be loaded: " + "; ".join(self.skipped.values()))
        if not self.pieces:
            raise ValueError(_nothing_planned(config, self.planned))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_loaded"] = {}  # a Ray worker loads its own zoo models
        return state

    def load(self, family: str, split: str) -> _Loaded:
        """The model and its shipped explainers by kind (loaded once per process)."""
        if self.models is not None:
            return _Loaded(self.models[(family, split)])
        if (family, split) not in self._loaded:
            self._loaded[(family, split)] = _model_and_explainers(family, split)
        return self._loaded[(family, split)]

    def manifest(self, stored: dict[str, Any] | None = None) -> dict[str, Any]:
        """The configuration: a resumed run must have the same."""
        return {"config": json_values(self.config)}

    def plan(self) -> dict[str, Any]:
        """Per model its planned variants and notes, and the skipped models (``plan.json``)."""
        return {"models": self.planned, "skipped": self.skipped}

    def shards(self) -> list[Shard]:
        """One shard per piece, named after it, counting the piece's images.

        A model's pieces share their affinity (``family/split``): on Ray they go to the same
        worker where the plan allows, which prepares the model once for them.
        """
        images = tuple(range(self.config.images))
        return [
            Shard(index, images, piece_name(family, split, label), affinity=f"{family}/{split}")
            for index, (family, split, label) in enumerate(self.pieces)
        ]

    def runner(self, *, prepare: bool = True, run: bool = True) -> BenchmarkRunner:
        """A [`BenchmarkRunner`][ctc_plugin.harness.benchmark.BenchmarkRunner]."""
        return BenchmarkRunner(self)


class BenchmarkRunner:
    """Computes the benchmark's pieces; prepares each model once (data, accuracy, features).

    Every piece seeds the random generators from its own name first, so its numbers do not
    depend on the pieces computed before it in the same process: a resumed run, and a run on
    Ray, equal an uninterrupted embedded run.

    Args:
        job: The job whose pieces it computes.
    """

    def __init__(self, job: BenchmarkJob) -> None:
        self.job = job
        self._data: dict[str, dict[str, Tensor]] = {}
        self._prepared: _Prepared | None = None

    def prepared(self, family: str, split: str) -> _Prepared:
        """The model ``family``/``split`` made ready (the last one is kept)."""
        current = self._prepared
        if current is not None and (current.family, current.split) == (family, split):
            return current
        self._prepared = None  # let the last model go first
        config = self.job.config
        started = time.perf_counter()
        loaded = self.job.load(family, split)
        model = loaded.model
        variants, _ = _plan(config, family, split, loaded.explainers, model, loaded.broken)
        if split not in self._data:
            self._data[split] = _load_data(split, config)
        data = self._data[split]
        _seed_piece(config, family, split, "(model preparation)")
        accuracy, makers, sources = _prepare_model(model, data, variants)
        current = _Prepared(
            family,
            split,
            model,
            data,
            {variant.label: variant for variant in variants},
            accuracy,
            makers,
            sources,
            time.perf_counter() - started,
        )
        self._prepared = current
        return current

    def sanity_rho(self, family: str, split: str, label: str) -> float:
        """The ``sanity_rho`` of one piece alone, equal to the one `run` computes for it.

        Only the stages the sanity check reads run: the model's preparation (data, features),
        the piece's seeding and warm-up, and the explanations of the robustness subset in the
        per-image pass's batches (see ``benchmarks/bench_sanity.py``).

        Raises:
            Exception: Whatever the method raises (`run` stores it as the piece's error).
        """
        ready = self.prepared(family, split)
        return _sanity_only(
            ready.variants[label],
            family,
            split,
            ready.model,
            ready.data,
            ready.sources,
            self.job.config,
        )

    def run(
        self, shard: Shard, progress: Any = None, prepared: Any = None
    ) -> tuple[Any, dict[str, np.ndarray]]:
        """Compute the piece of ``shard``: its table and curves.

        See [`piece_shard`][ctc_plugin.harness.store.piece_shard] for the table.

        A method that raises gives a piece holding its error; the progress bar is advanced by
        the piece's images in all, also then.
        """
        family, split, label = self.job.pieces[shard.index]
        ready = self.prepared(family, split)
        bar = _Counted(progress)
        bar.set_postfix_str(f"{family}/{split} {label}")
        piece = _compute_piece(
            ready.variants[label],
            family,
            split,
            ready.model,
            ready.data,
            ready.sources,
            ready.makers,
            self.job.config,
            bar,
        )
        piece.accuracy, piece.preparation = ready.accuracy, ready.seconds
        bar.update(max(0, len(shard.images) - bar.count))
        return piece_shard(piece)


def run_benchmark(
    config: BenchmarkConfig,
    out_dir: str | Path,
    models: Mapping[tuple[str, str], nn.Module] | None = None,
    show_progress: bool = True,
    *,
    threads: int | None = None,
    ray: bool | str | None = None,
    ray_workers: int | None = None,
) -> list[dict[str, object]]:
    """Run the benchmark (or resume it) and write its CSV files, tables and plots to ``out_dir``.

    The benchmark is a job of the resumable engine that ``explain-dataset`` runs on
    ([`run_job`][ctc_plugin.resumable.job.run_job]): every finished piece (one method variant
    on one model) is stored under ``out_dir`` as it completes (see
    [`store`][ctc_plugin.harness.store]). Running again with the same configuration skips the
    stored pieces and computes the rest; the report is always written from the stored pieces,
    so an interrupted and resumed run reports the same as an uninterrupted one (up to the
    measured times and memory). Embedded, pieces run one after another in report order, so
    [`write_stored_report`][ctc_plugin.harness.report.write_stored_report] can report whole
    models while a run is under way; on Ray they run side by side.

    Args:
        config: What to run.
        out_dir: Output folder (created if missing).
        models: ``{(family, split): model}`` to use instead of the zoo (for tests and for your
            own models); the Explainer is then left out.
        show_progress: Draw a progress bar over every piece's images.
        threads: Torch CPU threads of every piece (``None``: this process's count), on Ray
            workers too.
        ray: Run the pieces on Ray: ``True`` starts a local cluster, a string is a cluster's
            address (see [`run_on_ray`][ctc_plugin.resumable.cluster.run_on_ray]). Not part of
            the configuration: the numbers are the same, and either engine resumes the other's
            run.
        ray_workers: CPUs of the local Ray cluster (``None``: all).

    Returns:
        The summary rows (one per model, split and method), as written to ``results.csv``.

    Raises:
        ConfigMismatchError: When ``out_dir`` holds a run with another configuration.
        ValueError: When a model of ``models`` has a BatchNorm that keeps no running
            statistics (each image's numbers would depend on its batch), before anything runs.
        FileNotFoundError: When no model can be loaded. A single missing zoo weight file only
            skips that model, with a warning and a line under "Failures" in ``results.md``.
        RayUnavailableError: When ``ray`` is given and Ray is not installed.
        RayConnectionError: If ``ray`` is the address of a Ray cluster that cannot be
            reached.
        PermissionError: When ``out_dir`` is a folder this process cannot write (the report
            is written there, also for a finished run).
    """
    if read_only_folder(Path(out_dir)):  # the report goes there
        raise PermissionError(
            f"cannot write into {out_dir} (read-only, or not yours), where the benchmark writes "
            "its report: make it writable, or give another out_dir (a finished run's report is "
            "there already: read its results.md and results.csv)"
        )
    if ray:  # before the run folder is set up: a missing Ray is one clear error
        from ctc_plugin.resumable.cluster import import_ray

        import_ray()
    for (family, split), model in (models or {}).items():
        _check_batch_independent(model, f"{family}/{split}")
    # another configuration is refused before models load; a start that finished no piece
    # (its methods applied to no model, say) gives way
    BenchmarkStore(out_dir, config, restart_unfinished=True)
    job = BenchmarkJob(config, models, threads)
    run_job(job, out_dir, show_progress=show_progress, ray=ray, ray_workers=ray_workers)
    return write_stored_report(BenchmarkStore.open(out_dir))


def _check_batch_independent(model: nn.Module, name: str) -> None:
    """Refuse a model whose BatchNorm keeps no running statistics.

    It normalises each batch with that batch's own statistics, in eval mode too, and the
    benchmark classifies, explains and scores its images in batches: every number of an image
    would depend on the other images of its batch.

    Raises:
        ValueError: Naming the model and the module, and what to do.
    """
    from ctc_plugin.batchnorm import keeps_no_running_statistics
    from ctc_plugin.module_paths import module_path

    for module in model.modules():
        if keeps_no_running_statistics(module):
            where = module_path(model, module) or "(the model)"
            raise ValueError(
                f"model {name}: its {type(module).__name__} {where!r} keeps no running "
                "statistics (track_running_stats=False), so it normalises each batch with "
                "that batch's own statistics, and the benchmark classifies, explains and "
                "scores images in batches: each image's numbers would depend on the others; "
                "give it running statistics (estimated on training data) or a normalisation "
                "per example (GroupNorm, LayerNorm)"
            )


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
