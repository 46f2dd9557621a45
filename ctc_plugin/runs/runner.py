"""Explain the shards of an ``explain-dataset`` run: the model, segmenter and methods loaded once.

A [`ShardRunner`][ctc_plugin.runs.runner.ShardRunner] holds what a shard needs, loaded from the
run's [`RunConfig`][ctc_plugin.runs.plan.RunConfig]; the embedded engine makes one, a Ray
worker one per part (segmentation, methods).
"""

from __future__ import annotations

import json
import time
import warnings
from argparse import Namespace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctc_plugin.commands import CLIError
from ctc_plugin.resumable import Shard
from ctc_plugin.resumable.job import ShardInputError
from ctc_plugin.runs.imagenet import imagenet_classes
from ctc_plugin.runs.plan import RunConfig
from ctc_plugin.runs.results import IMAGE_SHA256_KEY, image_sha256, table_schema
from ctc_plugin.runs.sources import ImageRef, Source
from ctc_plugin.wording import caller_stacklevel, counted

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

__all__ = ["ShardRunner", "UnreadableImageError"]


class UnreadableImageError(CLIError, ShardInputError):
    """An image of the run cannot be read (missing, or damaged past its header).

    It stops only its shard: the run computes the others and then reports it
    ([`ShardInputError`][ctc_plugin.resumable.job.ShardInputError]); ``item`` is the image's
    name.
    """


class ShardRunner:
    """Explains shards: loads the model, the segmenter and the methods' inputs once.

    The embedded engine uses one runner for everything; on Ray, segmentation and the methods
    run in different workers, each with a runner that loads only its part.

    Args:
        config: The run's configuration.
        source: The run's images.
        segment: Load the segmenter (for [`segment`][ctc_plugin.runs.runner.ShardRunner.segment]
            and for [`run`][ctc_plugin.runs.runner.ShardRunner.run] without masks).
        explain: Load the model's methods (for ``run``).
        device: Where the model runs (``None``: the configuration's ``device``).
        loaded: The configuration's model, loaded already (a ``LoadedModel`` of
            ``ctc_plugin.commands.models.load_model``; the runner moves it to ``device``), or
            ``None``: loaded here.

    Raises:
        CLIError: For a model, weights, device or segmenter that cannot be used (the message
            names the option to fix).
    """

    def __init__(
        self,
        config: RunConfig,
        source: Source,
        *,
        segment: bool = True,
        explain: bool = True,
        device: str | None = None,
        loaded: Any = None,
    ) -> None:
        from ctc_plugin.commands.explain_setup import (
            explainer_for,
            make_segmenter,
            preprocessing_for,
            resolve_device,
        )
        from ctc_plugin.commands.model_checks import (
            check_input_channels,
            check_torchscript,
            check_weights_present,
            choose_precision,
        )
        from ctc_plugin.commands.models import load_model

        self.config = config
        self.source = source
        self._label_classes: dict[int, int] | None = None  # see label_classes
        self.device = resolve_device(config.device if device is None else device)
        weights = Path(config.weights) if config.weights else None
        # also for its preprocessing
        self.loaded = loaded if loaded is not None else load_model(config.model, weights)
        if self.loaded.note:  # a guessed preprocessing (a Hugging Face folder without one)
            warnings.warn(self.loaded.note, UserWarning, stacklevel=caller_stacklevel())
        check_input_channels(self.loaded)
        check_torchscript(self.loaded, list(config.methods) if explain else [])
        check_weights_present(self.loaded)
        note = choose_precision(self.loaded, self.device)  # float16 runs in float32
        if note:
            warnings.warn(note, UserWarning, stacklevel=caller_stacklevel())
        options = self._options = options_of(config)
        self.preprocessing = preprocessing_for(options, self.loaded)
        self.segmenter = make_segmenter(options) if segment else None
        if explain:
            self.explainer = explainer_for(
                self.loaded, options, option="--methods", preprocessing=self.preprocessing
            )
            self.model = self.preprocessing.wrap(self.loaded.network).to(self.device).eval()

    def check(self) -> None:
        """Classify the run's first readable image, find each target's class, try each method.

        A run starts with it, before its folder is set up, so that what would stop the run at
        its first image (a target the model does not have, ``label`` without labels, an image
        size the model or the Explainer cannot take, a method that cannot explain the model:
        Grad-CAM on a vision transformer, CTC on a model ending in a softmax) is refused before
        anything is written (`try_methods`). Needs ``explain=True``.

        Raises:
            CLIError: Naming the option to fix.
        """
        import torch

        from ctc_plugin.commands import torch_threads
        from ctc_plugin.commands.methods import try_methods

        with torch_threads(self.config.threads):
            ref, image = self._first_readable()
            pixels, logits = self.classify(ref, image)
            targets = [self.target(spec, ref, logits) for spec in self.config.targets]
            placeholder = torch.zeros(1, 1, 1, 1, dtype=torch.long)  # try_methods sets it
            request = self.request(pixels, targets[0], placeholder)
            try_methods(self.config.methods, request, self.config.model, "--methods", ref.name)

    def _first_readable(self) -> tuple[ImageRef, Any]:
        """The run's first image that can be read, and the image read.

        An image damaged past its header stops only its own shard (`UnreadableImageError`),
        so the checks before any work do not stop on it either: they take the next one.

        Raises:
            UnreadableImageError: The first image's, where no image can be read.
        """
        first: UnreadableImageError | None = None
        for ref in self.source.images:
            try:
                return ref, self.read(ref)
            except UnreadableImageError as error:
                first = first or error
        assert first is not None  # a source has at least one image
        raise first

    def request(self, pixels: Any, target: int, feature_mask: Any) -> Any:
        """What the methods get for one image and target (a `commands.methods.Request`)."""
        from ctc_plugin.commands.methods import Request

        return Request.with_options_of(
            self.config,
            model=self.model,
            pixels=pixels,
            target=target,
            feature_mask=feature_mask.to(self.device),
            show_progress=False,
            explainer=self.explainer,
        )

    def classify(self, ref: ImageRef, image: Any) -> tuple[Any, Any]:
        """``(pixels on the device, logits)`` of the prepared ``image`` of ``ref``.

        Raises:
            CLIError: If the model cannot take the image's size or gives scores that are not
                finite, or the Explainer of ``--methods explainer`` was trained on another size.
        """
        from ctc_plugin.commands import CLIError
        from ctc_plugin.commands.explain_setup import explainer_size_refusal
        from ctc_plugin.commands.model_checks import (
            check_finite_scores,
            fit_class_names,
            is_own_size,
            model_logits,
            model_pixels,
        )

        pixels = model_pixels(self.loaded, image.pixels, self.device)  # float64 for float64
        own = is_own_size(self.loaded.preprocessing, image.size)
        advice = self.size_advice()
        logits = model_logits(self.model, self.loaded, pixels, own, advice, where=ref.name)
        check_finite_scores(logits, self.loaded, ref.name)
        fit_class_names(self.loaded, logits)  # before the targets and labels are read
        refusal = explainer_size_refusal(self.explainer, ref.name, image.size)
        if refusal is not None:
            raise CLIError(f"--methods explainer: {refusal}")
        return pixels, logits

    def segment(self, shard: Shard) -> dict[int, tuple[Any, float]]:
        """Segment every image of ``shard``: ``{image index: (mask, seconds)}``.

        Masks are ``(1, 1, H, W)`` int64 ids ``0..K-1``; ``run(shard, prepared=...)`` takes them.
        """
        from ctc_plugin.commands import torch_threads

        with torch_threads(self.config.threads):
            return {
                index: self.segment_image(self.source.images[index])[1:] for index in shard.images
            }

    def segment_image(self, ref: ImageRef) -> tuple[Any, Any, float]:
        """Read one image and segment it: ``(prepared image, mask, seconds)``.

        Raises:
            RuntimeError: This runner was made with ``segment=False``.
            CLIError: The image cannot be read (see `read`), or the segmenter refuses it
                (the message names the image).
        """
        from ctc_plugin.commands.explain_setup import segment_image

        image = self.read(ref)
        if self.segmenter is None:
            raise RuntimeError("this ShardRunner was made with segment=False")
        start = time.perf_counter()
        mask = segment_image(self.segmenter, image.pixels, self._options, ref.name)
        return image, mask, time.perf_counter() - start

    def read(self, ref: ImageRef) -> Any:
        """The image ``ref``, prepared with the run's preprocessing (the model's own by default).

        Raises:
            UnreadableImageError: The file is no readable image (missing, damaged, of an
                unknown format); the message says to replace it and run the same command again.
        """
        try:
            return self.preprocessing(self.source.read(ref))
        except (ValueError, FileNotFoundError) as error:
            reason = str(error).rstrip()
            stop = "" if reason.endswith((".", "?", "!")) else "."
            unreadable = UnreadableImageError(
                f"{reason}{stop} Replace it with a readable image and run the same command "
                "again (finished shards are kept)"
            )
            unreadable.item = ref.name
            raise unreadable from error

    prepare = segment  # the job's preparation stage

    def run(
        self,
        shard: Shard,
        progress: Any = None,
        prepared: dict[int, tuple[Any, float]] | None = None,
    ) -> tuple[pa.Table, dict[str, np.ndarray]]:
        """Explain every image of ``shard``; return its table and its arrays.

        The arrays are, per image ``i`` (its plan index): ``image{i}/feature_mask`` (H, W)
        int32 segment ids ``0..K-1``, ``image{i}/logits`` float32 (float64 for a model computing
        in float64: `ctc_plugin.commands.model_checks.scores_row`) and, per target spec ``T`` and
        method ``M``, ``image{i}/{T}/{M}/attribution`` (H, W) float32.

        Args:
            shard: The shard.
            progress: A tqdm bar advanced by one per image.
            prepared: The shard's masks from
                [`segment`][ctc_plugin.runs.runner.ShardRunner.segment] (computed elsewhere);
                ``None`` segments here.
        """
        import pyarrow as pa
        import torch

        from ctc_plugin.commands import torch_threads

        rows: list[dict[str, Any]] = []
        arrays: dict[str, np.ndarray] = {}
        contents: dict[str, str] = {}
        with torch_threads(self.config.threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed + shard.index)
            for index in shard.images:
                ref = self.source.images[index]
                content = image_sha256(self.source, ref)
                if content is not None:
                    contents[ref.name] = content
                given = prepared[index] if prepared is not None else None
                image_rows, image_arrays = self.explain_image(ref, shard, given)
                rows.extend(image_rows)
                arrays.update(image_arrays)
                if progress is not None:
                    progress.update(1)
        table = pa.Table.from_pylist(rows, schema=table_schema())
        return table.replace_schema_metadata({IMAGE_SHA256_KEY: json.dumps(contents)}), arrays

    def explain_image(
        self, ref: ImageRef, shard: Shard, mask: tuple[Any, float] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        """Explain one image with every method and target; its segments are computed once.

        ``mask`` is a ``(mask, seconds)`` pair computed elsewhere; ``None`` segments here.
        """
        import numpy as np

        from ctc_plugin.commands.methods import run_for_command

        if mask is None:
            image, ids, segment_seconds = self.segment_image(ref)
        else:
            image = self.read(ref)
            ids, segment_seconds = mask
        pixels, logits = self.classify(ref, image)
        mask = ids
        key = f"image{ref.index}"
        arrays = {
            f"{key}/feature_mask": mask[0, 0].numpy().astype(np.int32),
            f"{key}/logits": logits.numpy(),  # float32, float64 for a float64 model
        }
        rows = []
        count = int(mask.max()) + 1
        for spec in self.config.targets:
            target = self.target(spec, ref, logits)
            request = self.request(pixels, target, mask)
            for name in self.config.methods:
                start = time.perf_counter()
                result = run_for_command(name, request, self.config.model, "--methods", ref.name)
                seconds = time.perf_counter() - start
                arrays[f"{key}/{spec}/{name}/attribution"] = result.attribution.numpy()
                rows.append(
                    {
                        "image": ref.index,
                        "name": ref.name,
                        "label": ref.label,
                        "shard": shard.index,
                        "target_spec": spec,
                        "target": target,
                        "predicted": int(logits.argmax()),
                        "method": name,
                        "title": result.title,
                        "per_segment": result.per_segment,
                        "segments": count,
                        "feature_ids": list(range(count)),
                        "scores": result.scores.double().tolist(),
                        "seconds": seconds,
                        "segment_seconds": segment_seconds,
                    }
                )
        return rows, arrays

    def size_advice(self) -> str:
        """What to do when the model cannot take an image at the size it is read at.

        The refusal names the image before it (`model_logits`'s ``where``).
        """
        from ctc_plugin.commands.model_checks import size_advice

        return (
            f"it is read at {self.preprocessing.describe()}: "
            f"{size_advice(self.loaded.preprocessing)}, or give a model that takes any size "
            "(one that ends in adaptive pooling, say)"
        )

    def target(self, spec: str, ref: ImageRef, logits: Any) -> int:
        """The class ``spec`` names for this image (``predicted``, ``label``, index or name).

        ``label`` is the image's class (see `label_classes`): by name when the model's class
        names hold every folder (a folder ``cat/`` is the model's class ``"cat"``), else
        ImageNet-1k's class for folders named by its WordNet IDs and a model of 1000 classes
        (`ctc_plugin.runs.imagenet`), else by name or the source's label index.

        Raises:
            CLIError: ``label`` for an image without a label, or a class index or name the model
                does not have.
        """
        from ctc_plugin.commands import CLIError
        from ctc_plugin.commands.model_checks import target_class

        if spec == "predicted":
            return int(logits.argmax())
        if spec == "label":
            if ref.label is None:
                raise CLIError(
                    f"--targets label: {ref.name} has no label (the folder has no class "
                    "subfolders); use predicted or a class index"
                )
            return self.label_classes(logits.numel())[ref.label]
        return target_class(spec, self.loaded, logits, option="--targets")

    def label_classes(self, count: int) -> dict[int, int]:
        """The model's class for each label of the run's images, for ``--targets label``.

        Every label is checked at the first image (the model has ``count`` classes), so a
        class folder the model does not know stops the run before its first shard, not hours
        later at that folder's images. The model's own class names come first; then
        ImageNet's WordNet-ID folders (`ctc_plugin.runs.imagenet`); then the folders' order.

        Raises:
            CLIError: Naming the first image of a class the model does not know, or the
                folders that are not ImageNet classes beside some that are.
        """
        from ctc_plugin.commands import CLIError

        if self._label_classes is None:
            first: dict[int, str] = {}  # label: its first image
            for ref in self.source.images:
                if ref.label is not None:
                    first.setdefault(ref.label, ref.name)
            folders, names = self.source.classes or (), self.loaded.classes or ()
            imagenet = None
            lower = {name.lower() for name in names}
            if not (names and {folder.lower() for folder in folders} <= lower):  # its own first
                try:
                    imagenet = imagenet_classes(folders, count)
                except ValueError as error:
                    raise CLIError(f"--targets label: {error}") from error
            self._label_classes = {
                label: imagenet[label] if imagenet else self._label_class(label, image, count)
                for label, image in first.items()
            }
        return self._label_classes

    def _label_class(self, label: int, image: str, count: int) -> int:
        """The model's class for the source's class ``label`` (``image`` is one of its images).

        Raises:
            CLIError: If the model has class names and not this class's, or fewer classes.
        """
        from ctc_plugin.commands import CLIError
        from ctc_plugin.commands.model_checks import class_name

        classes = self.source.classes
        name = classes[label] if classes is not None else str(label)
        if classes is not None and self.loaded.classes:
            known = self.loaded.classes
            spelled = class_name(name, known)  # in any case, as --target reads a class name
            if spelled is not None:
                return known.index(spelled)
            raise CLIError(
                f"--targets label: {image} is in class {name!r}, which the model does not "
                f"know ({', '.join(known[:10])}); name the class folders "
                "after the model's classes, or use predicted"
            )
        if label >= count:
            raise CLIError(
                f"--targets label: {image} has label {label} (class {name!r}) and the model "
                f"has only {counted(count, 'class', 'classes')}; use predicted or a class index"
            )
        return label


def options_of(config: RunConfig) -> Namespace:
    """The ``explain`` command's options that its helpers read, from ``config``."""
    return Namespace(
        segmenter=config.segmenter,
        segments=config.segments,
        sam_checkpoint=Path(config.sam_checkpoint) if config.sam_checkpoint else None,
        sam_model_type=config.sam_model_type,
        methods=list(config.methods),
        weights=config.weights,
        explainer=Path(config.explainer) if config.explainer else None,
        resize=config.resize,
        crop=config.crop,
        mean=config.mean,
        std=config.std,
    )
