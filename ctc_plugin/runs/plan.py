"""A run's configuration and its deterministic plan: which images each shard explains.

The plan depends only on the configuration and the source's image list: images in source order,
cut into shards of ``shard_size`` consecutive images. Shard ``s`` explains images
``s * shard_size`` to ``(s + 1) * shard_size - 1``, so the same command always makes the same
shards, and a resumed run knows which ones are left.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctc_plugin.ctc.modes import DEFAULT_BIAS_SHARING, check_mode
from ctc_plugin.method_calls import PERTURBATIONS_PER_EVAL, SAMPLES
from ctc_plugin.resumable.job import Shard
from ctc_plugin.resumable.store import json_values

__all__ = ["TARGET_KINDS", "RunConfig", "digest", "plan_shards"]

#: Targets besides a class index or name: the model's predicted class, the image's label.
TARGET_KINDS = ("predicted", "label")

#: The options that say how images are prepared (``None``: the model's own).
PREPROCESSING_OPTIONS = ("resize", "crop", "mean", "std")

#: The file options whose content a run pins (as ``<option>_sha256``): what each file is, in
#: words, and its command-line flag.
PINNED_FILES = {
    "weights": ("weights", "--weights"),
    "explainer": ("explainer", "--explainer"),
    "sam_checkpoint": ("SAM checkpoint", "--sam-checkpoint"),
}


@dataclass(frozen=True)
class RunConfig:
    """Everything that changes a run's results (stored in its manifest).

    Options that no chosen method or segmenter reads (`unread_options`: ``bias_sharing``
    without ``"ctc"``, ``lime_samples`` without ``"lime"``, ``perturbations_per_eval`` without
    a method that takes it, ``sam_model_type`` without ``segmenter="sam"``) are checked and
    stored as given, but change no result: a run is resumed with or without them
    ([`adopting_unread`][ctc_plugin.runs.plan.RunConfig.adopting_unread]).

    Attributes:
        methods: Method names (the keys of ``ctc_plugin.commands.methods.METHODS``), each
            once, in order.
        model: ``--model``: a zoo family, a torchvision architecture, ``timm:NAME``,
            ``hf:FOLDER`` (stored with the folder's resolved absolute path) or
            ``module:callable``.
        weights: State-dict file, or ``None``; stored as its resolved absolute path.
        weights_sha256: The sha256 of the weights file's content, or of an ``hf:`` folder's
            files (computed, not given): weights changed under the same path are another
            configuration.
        explainer: The Explainer file of the ``explainer`` method (``--explainer``), or
            ``None`` for the one shipped with a zoo model; stored as its resolved absolute path.
        explainer_sha256: The sha256 of the Explainer file's content (computed, not given).
        targets: What to explain per image: ``"predicted"``, ``"label"``, a class index or a
            class name; each gives one row per image and method.
        segmenter: ``"superpixel"``, ``"grid"`` or ``"sam"``.
        segments: About how many segments.
        sam_checkpoint: SAM checkpoint, for ``segmenter="sam"``; stored as its resolved
            absolute path.
        sam_checkpoint_sha256: The sha256 of the SAM checkpoint's content (computed, not
            given).
        sam_model_type: Its architecture.
        bias_sharing: CTC's bias sharing.
        lime_samples: Lime's samples.
        perturbations_per_eval: Copies per forward pass.
        shard_size: Images per shard.
        seed: Seed of the shard's random state (shard ``s`` starts from ``seed + s``) and of
            the shapes images.
        threads: Torch CPU threads each shard runs on (fixed, so results repeat bit for bit).
        device: Where the model runs.
        resize: ``--resize``: the images' shorter side, or ``None`` for the model's own.
        crop: ``--crop``: the side of the centre crop, ``"none"`` to keep the whole resized
            image, or ``None`` for the model's own.
        mean: ``--mean``: the normalisation mean (3 values, with ``std``), or ``None`` for the
            model's own.
        std: ``--std``: the normalisation standard deviation (with ``mean``).
    """

    methods: tuple[str, ...]
    model: str = "resnet"
    weights: str | None = None
    weights_sha256: str | None = field(default=None, init=False)
    explainer: str | None = None
    explainer_sha256: str | None = field(default=None, init=False)
    targets: tuple[str, ...] = ("predicted",)
    segmenter: str = "superpixel"
    segments: int = 25
    sam_checkpoint: str | None = None
    sam_checkpoint_sha256: str | None = field(default=None, init=False)
    sam_model_type: str = "vit_b"
    bias_sharing: str = DEFAULT_BIAS_SHARING
    lime_samples: int = SAMPLES
    perturbations_per_eval: int = PERTURBATIONS_PER_EVAL
    shard_size: int = 8
    seed: int = 1
    threads: int = 1
    device: str = "cpu"
    resize: int | None = None
    crop: int | str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        from ctc_plugin.commands.methods import METHODS

        if not self.methods:
            raise ValueError("give at least one method (" + ", ".join(METHODS) + ")")
        unknown = [name for name in self.methods if name not in METHODS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
        object.__setattr__(self, "methods", tuple(dict.fromkeys(self.methods)))
        object.__setattr__(self, "targets", tuple(dict.fromkeys(str(t) for t in self.targets)))
        if not self.targets:
            raise ValueError("give at least one target (predicted, label, a class index or name)")
        for name, value in (
            ("shard_size", self.shard_size),
            ("threads", self.threads),
            ("segments", self.segments),
            ("lime_samples", self.lime_samples),
            ("perturbations_per_eval", self.perturbations_per_eval),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        check_mode(self.bias_sharing)
        self._check_choices()
        if self.explainer is not None and "explainer" not in self.methods:
            raise ValueError(
                "explainer (--explainer) is the file of the explainer method, which is not "
                "among the methods: add it, or leave the file out"
            )
        for name in PINNED_FILES:
            self._pin_file(name)
        self._pin_model_folder()
        self._check_preprocessing()

    def _check_choices(self) -> None:
        """Refuse an unknown SAM model type (a bias sharing mode is checked before)."""
        from ctc_plugin.commands.explain_setup import SAM_MODEL_TYPES

        if self.sam_model_type not in SAM_MODEL_TYPES:
            raise ValueError(
                f"sam_model_type must be one of {', '.join(SAM_MODEL_TYPES)}, "
                f"got {self.sam_model_type!r}"
            )

    def unread_options(self) -> tuple[str, ...]:
        """The options that no chosen method or segmenter reads (they change no result)."""
        from ctc_plugin.commands.methods import reads_perturbations_per_eval

        chunked = [
            name for name in self.methods if reads_perturbations_per_eval(name, self.bias_sharing)
        ]
        unread = {
            "bias_sharing": "ctc" not in self.methods,
            "lime_samples": "lime" not in self.methods,
            "perturbations_per_eval": not chunked,
            "sam_model_type": self.segmenter != "sam",
        }
        return tuple(name for name, is_unread in unread.items() if is_unread)

    def adopting_unread(self, stored: dict[str, Any]) -> RunConfig:
        """A copy with the values ``stored`` (a manifest's config) of its unread options.

        A run resumed without ``--lime-samples`` (or with another one) where no method reads it
        is the same run: the stored value is kept, so the manifests agree. Stored values are
        checked as given ones are; an invalid one (a hand-edited manifest) is not taken.
        """
        adopted = {name: stored[name] for name in self.unread_options() if name in stored}
        try:
            return dataclasses.replace(self, **adopted)
        except (TypeError, ValueError):
            return self

    def adopting_preprocessing(
        self, stored: dict[str, Any], prepared_by: Callable[[RunConfig], object | None]
    ) -> RunConfig:
        """A copy with the ``stored`` preprocessing options where they prepare the same images.

        ``resize``, ``crop``, ``mean`` and ``std`` are taken from ``stored`` when they prepare
        the images exactly as this configuration's do. A run started with the model's own
        preprocessing and resumed with it spelled out (``--resize 96 --crop 96`` for a model
        that resizes and crops to 96), or the other way round, is the same run: the stored
        values are kept, so the manifests agree.

        Args:
            stored: A manifest's config.
            prepared_by: The images' preprocessing under a configuration (compared with
                ``==``), or ``None`` when it cannot be told (a model that does not load: the
                run's start names why).
        """
        try:
            candidate = dataclasses.replace(
                self, **{name: stored.get(name) for name in PREPROCESSING_OPTIONS}
            )
        except (TypeError, ValueError):  # a hand-edited manifest: not taken
            return self
        mine, theirs = self.to_dict(), candidate.to_dict()
        if all(mine[name] == theirs[name] for name in PREPROCESSING_OPTIONS):
            return self
        ours = prepared_by(self)
        return candidate if ours is not None and ours == prepared_by(candidate) else self

    def _check_preprocessing(self) -> None:
        """Check ``resize``, ``crop``, ``mean`` and ``std`` before any work; store them plainly.

        What fits only the model's own preprocessing (a ``crop`` alone, larger than the
        model's resize) is checked when the model is loaded.

        Raises:
            ValueError: For a size that is no positive whole number, a crop larger than
                ``resize``, and ``mean`` without ``std`` (or the reverse) or values that are not
                3 finite numbers (``std`` positive).
        """
        from ctc_plugin.images import ImagePreprocessing

        crop = self.crop
        if isinstance(crop, str):
            if crop.strip().lower() != "none":
                raise ValueError(
                    f"crop must be a positive whole number, 'none' (keep the whole resized "
                    f"image) or None (the model's own), got {crop!r}"
                )
            object.__setattr__(self, "crop", "none")
            crop = None
        if (self.mean is None) != (self.std is None):
            raise ValueError(
                "give both mean and std (--mean and --std, the model's input normalisation), "
                "or neither"
            )
        checked = ImagePreprocessing(resize=self.resize, crop=crop, mean=self.mean, std=self.std)
        if crop is not None:
            object.__setattr__(self, "crop", checked.crop)
        object.__setattr__(self, "mean", checked.mean)
        object.__setattr__(self, "std", checked.std)

    def _pin_file(self, name: str) -> None:
        """Resolve the file option ``name`` to an absolute path and record its sha256.

        A run resumed with a file of other content under the same path (retrained weights,
        say) then differs in ``<name>_sha256`` and is refused instead of mixing two models'
        results; the same file named by another path (relative, absolute) is the same run.

        Raises:
            FileNotFoundError: If the option names no file.
        """
        from ctc_plugin.weights import file_sha256

        value = getattr(self, name)
        if value is None:
            return
        path = Path(value).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{name} file not found: {value} (no such file, or a folder); give the path of "
                "a local file"
            )
        object.__setattr__(self, name, str(path.resolve()))
        object.__setattr__(self, f"{name}_sha256", file_sha256(path))

    def _pin_model_folder(self) -> None:
        """An ``hf:FOLDER`` model: its absolute path, its files' sha256 in ``weights_sha256``.

        The folder holds the weights (``--weights`` is refused with it), so a folder saved anew
        under the same path is another configuration, and the same folder named from another
        working directory the same one. A path that is no folder is left for the model's loading
        to refuse with its advice.
        """
        from ctc_plugin.weights import file_sha256

        prefix, colon, folder = self.model.partition(":")
        path = Path(folder).expanduser()
        if not colon or prefix != "hf" or not path.is_dir():
            return
        files = sorted(p for p in path.rglob("*") if p.is_file())
        listing = [(str(p.relative_to(path)), file_sha256(p)) for p in files]
        object.__setattr__(self, "model", f"hf:{path.resolve()}")
        object.__setattr__(self, "weights_sha256", digest(listing))

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-able data (lists for tuples)."""
        return json_values(self)


def plan_shards(count: int, shard_size: int) -> list[Shard]:
    """Cut ``count`` images into shards of ``shard_size`` consecutive images (the last smaller).

    Shards are [`Shard`][ctc_plugin.resumable.job.Shard]s named ``shard-<index>``.

    Raises:
        ValueError: ``shard_size`` is below 1.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    return [
        Shard(s, tuple(range(start, min(start + shard_size, count))))
        for s, start in enumerate(range(0, count, shard_size))
    ]


def digest(data: Any) -> str:
    """A short stable hash of JSON-able ``data`` (the manifest's plan fingerprint)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
