"""``explain-dataset`` as a job of the resumable engine: explain the shards of a data set.

[`explain_dataset`][ctc_plugin.runs.engine.explain_dataset] resolves the source, plans the
shards and hands an [`ExplainJob`][ctc_plugin.runs.engine.ExplainJob] to
[`run_job`][ctc_plugin.resumable.job.run_job], the engine ``ctc-plugin benchmark`` runs on too:
it opens (or resumes) the output folder and runs every shard that is not finished yet, in this
process or on Ray, through [`ShardRunner`][ctc_plugin.runs.runner.ShardRunner]s. A shard runs
on a fixed number of torch CPU threads and from a fixed random state (``seed + shard``), so its
results do not depend on which shards ran before it in the same process: a resumed run equals
an uninterrupted one bit for bit on the CPU (all columns but the timings).
"""

from __future__ import annotations

import functools
import numbers
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ctc_plugin.ctc.modes import DEFAULT_BIAS_SHARING
from ctc_plugin.method_calls import PERTURBATIONS_PER_EVAL, SAMPLES
from ctc_plugin.resumable import ConfigMismatchError, JobResult, RunStore, Shard, run_job
from ctc_plugin.resumable.job import check_start
from ctc_plugin.runs.plan import PINNED_FILES, RunConfig, digest, plan_shards
from ctc_plugin.runs.results import (
    all_zero_rows_of,
    explained_contents,
    image_sha256,
    image_stat,
    run_shards,
)
from ctc_plugin.runs.runner import ShardRunner, options_of
from ctc_plugin.runs.sources import (
    Source,
    SourceError,
    resolve_source,
    shapes_source,
    shapes_split,
)
from ctc_plugin.wording import first_names

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "ExplainJob",
    "RunResult",
    "explain_dataset",
    "explained_pixels",
    "read_results",
]


@dataclass(frozen=True)
class RunResult(JobResult):
    """What [`explain_dataset`][ctc_plugin.runs.engine.explain_dataset] did.

    Attributes:
        out: The output folder.
        images: Images in the plan.
        shards: Shards in the plan.
        computed: Shards computed by this call (the others were finished before, or by
            another process on the same folder meanwhile).
        seconds: Wall-clock seconds of this call.
    """

    def table(self) -> pa.Table:
        """Every row of the run, as one ``pyarrow.Table`` (``.to_pandas()`` for a DataFrame)."""
        return read_results(self.out)


def read_results(out: str | os.PathLike[str]) -> pa.Table:
    """The rows of every finished shard in the run folder ``out``, in plan order.

    Only the run's shards are read: another ``.parquet`` file in its shards folder (a copy of
    a shard, say) is left out, with a warning naming it
    ([`run_shards`][ctc_plugin.runs.results.run_shards]).

    Raises:
        FileNotFoundError: If ``out`` holds no finished shard.
    """
    store = RunStore(out)
    table = store.read_table(run_shards(store))
    return table.replace_schema_metadata(None)  # no one shard's metadata


@dataclass(frozen=True)
class ExplainJob:
    """``explain-dataset`` as a [`Job`][ctc_plugin.resumable.job.Job] of the resumable engine.

    Its preparation stage is the segmentation (on GPU workers of a Ray cluster that has GPUs).

    Args:
        config: The run's configuration.
        source: Its images.
    """

    config: RunConfig
    source: Source
    name: ClassVar[str] = "explain-dataset"
    prepare_stage: ClassVar[bool] = True

    @property
    def threads(self) -> int:
        """The configuration's torch CPU threads."""
        return self.config.threads

    def shards(self) -> list[Shard]:
        """Shards of ``shard_size`` consecutive images."""
        return plan_shards(len(self.source.images), self.config.shard_size)

    def manifest(self, stored: dict[str, Any] | None = None) -> dict[str, Any]:
        """Configuration, source (with a digest of its image list), plan digest and precision.

        Against a ``stored`` manifest, the options no method reads take its values
        ([`RunConfig.adopting_unread`][ctc_plugin.runs.plan.RunConfig.adopting_unread]), and
        so do preprocessing options that prepare the images as the stored ones do
        ([`RunConfig.adopting_preprocessing`][ctc_plugin.runs.plan.RunConfig.adopting_preprocessing]).
        ``precision`` is the floating-point type the model runs in
        (`ctc_plugin.commands.model_checks.run_precision`: ``"float64"`` for a
        float64 model, ``"float32"`` otherwise), see `precision_entry`.
        """
        config = self.config
        if stored is not None and isinstance(stored.get("config"), dict):
            config = config.adopting_unread(stored["config"])
            config = config.adopting_preprocessing(stored["config"], self._preprocessing)
        manifest = manifest_for(config, self.source, self.shards())
        own = self._own_model
        return {**manifest, **precision_entry(None if own is None else own[1], stored)}

    def _preprocessing(self, config: RunConfig) -> object | None:
        """The images' preprocessing under ``config`` (``None``: the model does not load)."""
        from ctc_plugin.commands import CLIError
        from ctc_plugin.commands.explain_setup import preprocessing_for

        try:
            own = self._own_model
            return None if own is None else preprocessing_for(options_of(config), own[0])
        except (CLIError, OSError, ValueError):
            return None

    @functools.cached_property
    def _own_model(self) -> tuple[Any, str] | None:
        """The model's own preprocessing and its precision, or ``None`` when it does not load.

        The precision is the floating-point type it runs in on the configuration's device
        (`ctc_plugin.commands.model_checks.run_precision`). The model is
        loaded for them once a job (`_loaded_model`) and then handed to the start's runner
        (`loaded_model`): the job, sent to Ray workers as it is, keeps only these.
        """
        from ctc_plugin.commands.model_checks import run_precision

        loaded = self._loaded_model
        if loaded is None:
            return None
        return loaded.preprocessing, run_precision(loaded.network, self.config.device)

    @functools.cached_property
    def _loaded_model(self) -> Any | None:
        """The model loaded (a ``LoadedModel``), or ``None`` when it does not load here."""
        from ctc_plugin.commands import CLIError
        from ctc_plugin.commands.models import load_model

        weights = Path(self.config.weights) if self.config.weights else None
        try:
            return load_model(self.config.model, weights)
        except (CLIError, OSError, ValueError):  # the runner loads it again, and says why
            return None

    def loaded_model(self) -> Any | None:
        """The model this job loaded for its manifest, handed over once (``None``: none).

        The start's runner takes it instead of loading the model again (`checked_runner`);
        a runner changes it (its device, float16 to float32), so its preprocessing and
        precision are read first and the job lets go of it.
        """
        _ = self._own_model  # read before the runner changes the model
        return self.__dict__.pop("_loaded_model", None)

    def __getstate__(self) -> dict[str, Any]:
        """What is pickled (for Ray workers): the job's data, never a loaded model."""
        state = dict(self.__dict__)
        state.pop("_loaded_model", None)
        return state

    def plan(self) -> dict[str, Any]:
        """The image list, ``{"images": [[name, label, *stat], ...], "limit": N}`` (``plan.json``).

        The manifest holds only the list's digest (names and labels); with the list, a start
        refused because the folder's images changed can name the images added and removed, and
        a resume can tell an image of a finished shard rewritten in place (its size, times and
        inode, `image_stat`; ``None`` for generated images). ``limit`` is the ``images``
        (``--images``) that cut a folder's list (`Source.limit`), so that a resume without it
        is told to give it, not that images were added.
        """
        return {
            "images": [
                [ref.name, ref.label, *stat]
                for ref, stat in zip(self.source.images, self.image_stats, strict=True)
            ],
            "limit": self.source.limit,
        }

    @functools.cached_property
    def image_stats(self) -> list[tuple[int | None, ...]]:
        """Each image's `image_stat` now, read once per start (`plan`, `check_finished_images`)."""
        return [image_stat(self.source, ref) for ref in self.source.images]

    def runner(self, *, prepare: bool = True, run: bool = True) -> ShardRunner:
        """A [`ShardRunner`][ctc_plugin.runs.runner.ShardRunner] (segmenter and/or methods)."""
        return ShardRunner(self.config, self.source, segment=prepare, explain=run)


def manifest_for(config: RunConfig, source: Source, shards: list[Shard]) -> dict[str, Any]:
    """The manifest of a run: configuration, source (with its image list) and plan."""
    described = source.describe()
    return {
        "config": config.to_dict(),
        "source": {key: value for key, value in described.items() if key != "images"},
        "images": len(source.images),
        "image_list": digest(described["images"]),
        "shards": len(shards),
        "plan": digest([list(shard.images) for shard in shards]),
    }


#: The precision of a run whose manifest records none: the versions before it was recorded
#: ran every model in float32 (a float64 one cast to it).
UNRECORDED_PRECISION = "float32"


def precision_entry(precision: str | None, stored: dict[str, Any] | None) -> dict[str, str]:
    """The manifest's ``precision`` entry for a run computing in ``precision``.

    A run's results depend on the floating-point type its model runs in, so a resume in another
    type (a float64 model resumed by a version that runs it in float64, on a run started in
    float32) is refused instead of mixing both in one table. A ``stored`` manifest without the
    entry (a run of an earlier version) computed in `UNRECORDED_PRECISION`: a start in float32
    then leaves it out too, so that such a run resumes; a start in float64 records it, and is
    refused (`_restated_mismatch` says why).

    Args:
        precision: ``"float32"``, ``"float64"``; ``None`` where the model does not load here
            (its start refuses it): the stored entry is kept, so that another run in the folder
            is named first.
        stored: The folder's manifest, or ``None``.
    """
    recorded = stored is not None and "precision" in stored
    if precision is None:
        return {"precision": stored["precision"]} if recorded else {}
    if stored is not None and not recorded and precision == UNRECORDED_PRECISION:
        return {}
    return {"precision": precision}


def _restated_precision(
    error: ConfigMismatchError, out: str | os.PathLike[str]
) -> ConfigMismatchError:
    """``error`` with a precision its run did not record given as `UNRECORDED_PRECISION`.

    Where the precision is all that differs, the advice says what it is and how to resume.
    """
    unrecorded = any(key == "precision" and old is None for key, old, _ in error.differences)
    differences = [
        (key, UNRECORDED_PRECISION if key == "precision" and old is None else old, new)
        for key, old, new in error.differences
    ]
    if [key for key, _, _ in differences] != ["precision"]:
        return ConfigMismatchError(Path(out), differences, advice=error.advice)
    _, there, now = differences[0]
    earlier = (
        " (it was started by an earlier version of ctc-plugin, which recorded no precision "
        "and ran every model in float32)"
        if unrecorded
        else ""
    )
    conversion = {"float32": "model.float()", "float64": "model.double()"}.get(
        there, f"model.to(torch.{there})"
    )
    return ConfigMismatchError(
        Path(out),
        differences,
        advice=f"this run computes in {there}{earlier} and --model runs in {now} now (a model "
        "runs in the type of its weights; float16 and bfloat16 ones, and any on --device mps, "
        f"in float32); its table would mix both: give --model in {there} ({conversion} in its "
        f"callable, or {there} weights) to resume the run, or choose another --out",
    )


def _restated_mismatch(
    error: ConfigMismatchError, out: str | os.PathLike[str], source: Source
) -> ConfigMismatchError:
    """``error`` restated when the images of the run's folder (or its weights) changed.

    The same command on a folder with images added, removed or moved to another class folder
    is another image list: the error then names those images (from the ``plan.json`` of the
    run in ``out``) and says to put them back, instead of showing the list's digests. A
    precision that differs is given as the run's and this start's floating-point types (the
    run's as `UNRECORDED_PRECISION` where its manifest records none), with what to do where it
    alone differs (`_restated_precision`). Any other ``error`` is returned as it is.
    """
    if any(key == "precision" for key, _, _ in error.differences):
        error = _restated_precision(error, out)
        if len(error.differences) == 1:
            return error
    keys = [key for key, _, _ in error.differences]
    if "shard_size" in keys and any(key in ("plan", "shards") for key in keys):
        # the plan and the shard count follow from the shard size: only it is named
        kept = [d for d in error.differences if d[0] not in ("plan", "shards")]
        error = ConfigMismatchError(Path(out), kept)
        keys = [key for key, _, _ in kept]
    files = {f"{name}_sha256": words for name, words in PINNED_FILES.items()}
    if keys and all(key in files for key in keys):
        named = " and ".join(f"the {files[key][0]} file" for key in keys)
        options = " and ".join(files[key][1] for key in keys)
        return ConfigMismatchError(
            Path(out),
            error.differences,
            advice=f"{named} {'has' if len(keys) == 1 else 'have'} other contents than when "
            "this run started "
            "(retrained or replaced under the same name): put the run's file back to resume "
            f"it, or choose another --out for the new {options}",
        )
    folder_changed = "image_list" in keys or "source.classes" in keys
    if source.kind != "folder" or not folder_changed or "source.spec" in keys:
        # the digests of the image list and the plan follow from the options named beside
        options = [d for d in error.differences if d[0] not in ("image_list", "plan", "shards")]
        moved = [old for key, old, _ in options if key == "source.spec"]
        if moved and len(options) == 1 and source.kind == "folder":  # only the folder's path
            return ConfigMismatchError(
                Path(out),
                options,
                advice=f"this run explains the images of another folder: give SOURCE "
                f"{moved[0]} (move the folder back if it was moved), or choose another --out",
            )
        if options and len(options) < len(error.differences):
            return ConfigMismatchError(Path(out), options, advice=error.advice)
        return error
    now = {name: label for name, label in source.describe()["images"]}
    try:
        planned = RunStore(out).plan() or {}
        there = {row[0]: row[1] for row in planned.get("images") or []}
    except (ValueError, TypeError, IndexError, AttributeError):  # no readable list
        planned, there = {}, {}
    changes = [
        ("added", [name for name in now if name not in there]),
        ("removed", [name for name in there if name not in now]),
        ("in another class", [name for name in now if name in there and there[name] != now[name]]),
    ]
    empty = [(what, names) for what, names in _empty_class_changes(error, now, there) if names]
    listed = "; ".join(
        [f"{what}: {first_names(names)}" for what, names in empty]
        + [f"{what}: {first_names(names)}" for what, names in changes if names and there]
    )
    # digests: the advice says what changed; the shard count follows from the image count
    derived = ("image_list", "plan", "shards") if "images" in keys else ("image_list", "plan")
    shown = [d for d in error.differences if d[0] not in derived]
    differences = shown or [d for d in error.differences if d[0] == "image_list"]
    names_there, names_now = list(there), list(now)
    if there and len(names_now) > len(names_there) and names_now[: len(there)] == names_there:
        more = _more_images_advice(planned, names_there, names_now, source)
        if more is not None:
            return ConfigMismatchError(Path(out), differences, advice=more)
    if there and len(names_now) < len(names_there) and names_there[: len(names_now)] == names_now:
        # the first images of the run: --images limits them, or the last files were removed
        return ConfigMismatchError(
            Path(out),
            differences,
            advice=f"this command takes the first {len(names_now)} of the run's "
            f"{len(names_there)} images of {source.root} (left out: "
            f"{first_names(names_there[len(names_now) :])}): if --images limits them, give "
            f"--images {len(names_there)} (or leave it out) to resume the run; if the files "
            "were removed, put them back; or choose another --out",
        )
    return ConfigMismatchError(
        Path(out),
        differences,
        advice=f"the {'images' if 'image_list' in keys else 'class folders'} of {source.root} "
        "changed since this run started"
        + (f" ({listed})" if listed else "")
        + (
            "; a class folder counts even when empty, as its place among the sorted class "
            "folders numbers the labels"
            if empty
            else ""
        )
        + ": put them back as they were to resume it, or choose another --out",
    )


def _empty_class_changes(
    error: ConfigMismatchError, now: dict[str, Any], there: dict[str, Any]
) -> list[tuple[str, list[str]]]:
    """The empty class folders added to and removed from SOURCE since the run started.

    An empty class folder changes no image's name, but its place numbers the labels of the
    folders after it, so a run is refused for it: the refusal names it (``zzz/``). A class
    folder with images is named by its images (added, removed). ``now`` and ``there`` are the
    images (by name) of this start and of the run's ``plan.json``; ``error`` gives the classes.
    """
    for key, old, new in error.differences:
        if key == "source.classes":
            before = old if isinstance(old, list) else []
            after = new if isinstance(new, list) else []

            def empty(folder: str, images: dict[str, Any]) -> bool:
                return not any(name.startswith(f"{folder}/") for name in images)

            return [
                ("empty class folders added",
                 [f"{c}/" for c in after if c not in before and empty(c, now)]),
                ("empty class folders removed",
                 [f"{c}/" for c in before if c not in after and empty(c, there)]),
            ]  # fmt: skip
    return []


def _more_images_advice(
    planned: dict[str, Any], names_there: list[str], names_now: list[str], source: Source
) -> str | None:
    """What to do where the command takes the run's images and more after them.

    The run's ``plan.json`` records the ``--images`` that cut its list (``limit``): where it
    did, the run was started with it (and is resumed without it, or with another); where it
    records none (a run of an earlier version), either that or files added since. ``None``:
    the list was not cut, so the images after the run's were added (the caller says so).
    """
    count = len(names_there)
    if planned.get("limit", count) != count:
        return None
    if "limit" in planned:
        return (
            f"this run was started with --images {count}; give --images {count} to resume it, "
            "or choose another --out"
        )
    return (
        f"this command takes {len(names_now)} images of {source.root}, the run's {count} "
        f"and {len(names_now) - count} more after them: if the run was started with --images "
        f"{count}, give --images {count} to resume it; if the files were added since "
        f"({first_names(names_now[count:])}), remove them; or choose another --out"
    )


def model_for_source(model: str, source: str | os.PathLike[str]) -> str:
    """``model`` for the images of ``source``: on the bundled ones, the split's zoo weights.

    As ``ctc-plugin demo`` chooses them
    ([`model_for_split`][ctc_plugin.commands.explain_setup.model_for_split]): a zoo family explains
    ``shapes:composite`` with its composite weights (``resnet``: ``resnet-composite``). A
    folder's model is kept as given.

    Raises:
        CLIError: For a zoo model trained on the other split (``resnet-composite`` on
            ``shapes``).
    """
    from ctc_plugin.commands.explain_setup import model_for_split

    split = shapes_split(source)
    if split is None:
        return model
    return model_for_split(model, split, lambda chosen: f"SOURCE {shapes_source(chosen)}")[0]


def checked_runner(job: ExplainJob, ray: bool | str | None) -> ShardRunner:
    """A runner of ``job`` that has checked the run on its first image (`ShardRunner.check`).

    Made before the run folder is set up, so that a model, weights, preprocessing, device,
    segmenter or target that cannot be used is refused before ``manifest.json`` and
    ``plan.json`` are written. On Ray the workers run the shards and this runner only checks:
    it loads no segmenter and runs the model on the CPU (the workers may have devices this
    machine lacks, and check them themselves).

    Raises:
        CLIError: Naming the option to fix.
    """
    runner = ShardRunner(
        job.config,
        job.source,
        segment=not ray,
        device="cpu" if ray else None,
        loaded=job.loaded_model(),  # the model the manifest loaded: not loaded again
    )
    runner.check()
    return runner


def explained_pixels(out: str | os.PathLike[str], image: int | Sequence[int]) -> Any:
    """The pixels the run in ``out`` explained image ``image`` on (the table's ``image`` column).

    ``(1, 3, H, W)`` float32 in [0, 1], the image read again from its source with the run's
    preprocessing (its ``--resize``, ``--crop``, ``--mean`` and ``--std``, or the model's own):
    what its ``feature_mask`` and attributions lie over, for
    [`plot_segment_scores`][ctc_plugin.viz.plot_segment_scores]. The shards store no pixels
    (they are the source's); the model is loaded for its preprocessing. A sequence of images
    gives the list of their pixels: the source is listed and the model loaded once (each call
    does both, a noticeable cost in a loop over a large data set).

    Raises:
        FileNotFoundError: If ``out`` holds no run.
        IndexError: If an image is not in the run's plan.
        SourceError: If the run's image folder is no folder now (moved: move it back).
        ValueError: If the source's images changed since the run started (put them back).
    """
    store = RunStore(out)
    manifest = store.manifest()
    stored, described = manifest["config"], manifest["source"]
    wanted = [image] if isinstance(image, numbers.Integral) else list(image)
    for index in wanted:
        if not 0 <= index < manifest["images"]:
            raise IndexError(f"{out} explained images 0 to {manifest['images'] - 1}, not {index}")
    spec = described["spec"]
    if described.get("kind") == "folder" and not Path(spec).exists():
        raise SourceError(
            f"the run in {out} explains the images of {spec}, which is no folder now (a run "
            f"records the path of its image folder): move the folder back to {spec} to read "
            "the pixels it explained"
        )
    source = resolve_source(spec, images=manifest["images"], seed=stored["seed"])
    if digest(source.describe()["images"]) != manifest["image_list"]:
        raise ValueError(
            f"the images of {described['spec']} changed since the run in {out} started; put "
            "them back as they were to read the pixels it explained"
        )
    config = RunConfig(
        **{field: stored[field] for field in RunConfig.__dataclass_fields__ if field in stored
           and RunConfig.__dataclass_fields__[field].init}
    )  # fmt: skip
    _check_explained_contents(store, source, config, wanted, out)
    runner = ShardRunner(config, source, segment=False, explain=False)
    pixels = [runner.read(source.images[index]).pixels for index in wanted]
    return pixels[0] if isinstance(image, numbers.Integral) else pixels


def _check_explained_contents(
    store: RunStore,
    source: Source,
    config: RunConfig,
    wanted: list[int],
    out: str | os.PathLike[str],
) -> None:
    """Refuse images whose files hold other pictures than their shards explained.

    Each finished shard's table records the content sha256 of its images; an image rewritten
    since (another picture under its name) would give pixels under which its stored mask and
    maps do not lie.

    Raises:
        ValueError: Naming the images.
    """
    of_image = {index: shard.name for shard in plan_shards(len(source.images), config.shard_size)
                for index in shard.images}  # fmt: skip
    contents: dict[str, dict[str, str]] = {}
    changed = []
    for index in wanted:
        shard = of_image[index]
        if shard not in contents:
            contents[shard] = explained_contents(store, shard)
        ref = source.images[index]
        recorded = contents[shard].get(ref.name)
        if recorded is not None and recorded != image_sha256(source, ref):
            changed.append(ref.name)
    if changed:
        raise ValueError(
            f"the {'image' if len(changed) == 1 else 'images'} {first_names(changed)} of "
            f"{source.spec} changed since the run in {out} explained "
            f"{'it' if len(changed) == 1 else 'them'}; put "
            f"{'it' if len(changed) == 1 else 'them'} back as "
            f"{'it was' if len(changed) == 1 else 'they were'} to read the pixels it explained"
        )


def check_finished_images(job: ExplainJob, out: str | os.PathLike[str]) -> None:
    """Refuse to resume a run whose finished shards read images that were rewritten since.

    The manifest pins the image list by names and labels; each finished shard's table holds the
    content sha256 of its images when they were explained, and ``plan.json`` each image's file
    stat (size, times, inode) when the run last started. An image of a finished shard whose
    file changed since (another picture under the same name) would leave that shard's results
    of the old image beside the others' of the new folder, which no uninterrupted run gives.
    Only the images whose stat changed are read again (all of them where ``plan.json`` is
    missing; a ``plan.json`` of an earlier version, of sizes and modification times only, is
    compared on those): a picture copied over another with ``cp -p`` keeps its size,
    modification time and inode, but not its change time, and one put back with the same
    content is the same image. The shards are those the run made (by the
    images their tables name), whatever shard size the new command gives.

    Raises:
        CLIError: Naming the images, and what to do (put them back, or compute their shards
            again).
        ValueError: If a finished shard's files cannot be read (where images are compared):
            naming the ``.parquet`` to delete.
    """
    from ctc_plugin.commands import CLIError

    store = RunStore(out)
    try:
        finished = run_shards(store)  # other .parquet files are named, and not compared
    except OSError:  # an unreadable folder: the start says so
        return
    if not finished:
        return
    try:
        rows = (store.plan() or {}).get("images") or []
        planned = {row[0]: list(row[2:]) for row in rows}
    except (ValueError, TypeError, IndexError, AttributeError, OSError):  # unreadable: not known
        rows, planned = [], {}
    now = {ref.name: (ref, list(stat)) for ref, stat in zip(job.source.images, job.image_stats)}
    suspect = {
        name
        for name, (_, stat) in now.items()
        if None not in stat
        and (not planned or (name in planned and stat[: len(planned[name])] != planned[name]))
    }  # a plan.json of an earlier version holds (size, mtime) only: those are compared
    if not suspect:
        return
    store.check_readable(finished)  # a table that does not parse records no contents
    stored_shards = _stored_shard_images(store, [row[0] for row in rows])
    changed = []
    for shard in finished:
        recorded = explained_contents(store, shard)
        for name in recorded or stored_shards.get(shard, ()):
            if name in suspect and (  # not recorded: the stat must do
                recorded.get(name) is None
                or recorded[name] != image_sha256(job.source, now[name][0])
            ):
                changed.append((name, shard))
    if changed:
        names = first_names([name for name, _ in changed])
        shards = sorted({shard for _, shard in changed})
        parquet = ", ".join(str(store.table_path(shard)) for shard in shards[:3])
        one = len(changed) == 1
        raise CLIError(
            f"--out {out}: {'the image' if one else 'the images'} {names} changed since "
            f"{'its shard was' if one else 'their shards were'} finished; put "
            f"{'it back as it was' if one else 'them back as they were'} (the same content), "
            f"or delete {parquet} to compute "
            f"{'those shards' if len(shards) > 1 else 'that shard'} again"
        )


def _stored_shard_images(store: RunStore, planned: list[str]) -> dict[str, list[str]]:
    """The image names of each shard of the run in ``store``, from its plan and shard size.

    For finished shards whose tables record no contents (written by an earlier version); empty
    where the run's ``plan.json`` or manifest cannot be read.
    """
    try:
        size = int(store.manifest()["config"]["shard_size"])
        shards = plan_shards(len(planned), size)
    except (ValueError, TypeError, KeyError, OSError):
        return {}
    return {shard.name: [planned[index] for index in shard.images] for shard in shards}


def _resolve_run_source(
    source: str | os.PathLike[str], images: int | None, seed: int, out: str | os.PathLike[str]
) -> Source:
    """``resolve_source(source, images, seed)``, naming the run in ``out`` where SOURCE is gone.

    A run records the resolved path of its image folder (and none of its own folder, so ``out``
    moved elsewhere resumes there). The same command after the image folder was moved gives a
    SOURCE that is no folder now: where it is the folder of the run in ``out``, the refusal
    says so, and where the run's images must be to resume it.

    Raises:
        SourceError: As `resolve_source` raises it.
    """
    try:
        return resolve_source(source, images=images, seed=seed)
    except SourceError:
        spec = _gone_folder_of_run(source, out)
        if spec is None:
            raise
        raise SourceError(
            f"SOURCE {os.fspath(source)!r} is no folder now, and the run in --out {out} explains "
            "the images that were there: a run records the path of its image folder, so move "
            f"the folder back to {spec} to resume the run, or choose another --out to start a "
            "new run of the folder where it is now"
        ) from None


def _gone_folder_of_run(source: str | os.PathLike[str], out: str | os.PathLike[str]) -> str | None:
    """The image folder of the run in ``out`` where SOURCE names it and it is gone (or ``None``)."""
    given = Path(os.fspath(source)).expanduser()
    if shapes_split(source) is not None or given.exists():
        return None
    try:
        manifest = RunStore(out).manifest()
    except (OSError, ValueError):  # no run there, or none this version reads
        return None
    described = manifest.get("source")
    spec = described.get("spec") if isinstance(described, dict) else None
    same = spec in (str(given.absolute()), str(given.resolve()))
    return spec if manifest.get("job") == ExplainJob.name and same else None


def _refuse_out_inside(source: Source, out: str | os.PathLike[str]) -> None:
    """Refuse a run folder inside the image folder it explains.

    The run's folder would be listed with the images: as a class folder (a new, empty class
    on the next start, which then refuses to resume) or beside the images (its files named as
    skipped on every start).

    Raises:
        SourceError: Naming both folders.
    """
    if source.kind != "folder" or source.root is None:
        return
    given = Path(out).expanduser()
    folders = {given.absolute(), given.resolve()}
    # the listing follows links to folders: a class folder that is a link holds its target
    listed = {source.root, Path(source.spec).expanduser().absolute()}
    listed |= {entry.resolve() for entry in source.root.iterdir() if entry.is_dir()}
    if any(folder == root or root in folder.parents for folder in folders for root in listed):
        raise SourceError(
            f"--out {out} lies inside SOURCE {source.spec}: the run's folder would be read "
            "with the images (as a class folder of its own on the next start, which could "
            "then not resume); choose an --out outside the image folder"
        )


def _warn_of_drawn_weights(config: RunConfig, model: Any) -> None:
    """Warn where ``--model module:callable`` without weights gives other weights each call.

    A resumed run calls it again, and its shards would then be of another model (code is not
    part of the run's configuration). It is called once more here and the weights compared.
    """
    import torch

    from ctc_plugin.commands.models import is_callable_spec, load_model

    if config.weights is not None or not is_callable_spec(config.model):
        return
    again = load_model(config.model, None).network.state_dict()
    first = model.state_dict()
    same = first.keys() == again.keys() and all(
        torch.equal(first[key].cpu(), again[key].cpu()) for key in first
    )
    if not same:
        warnings.warn(
            f"--model {config.model} gives other weights each time it is called, and a resumed "
            "run calls it again: its shards would be of another model; load or seed the weights "
            "in the callable, or give --weights",
            UserWarning,
            stacklevel=3,
        )


def _warn_of_empty_results(config: RunConfig, result: JobResult) -> None:
    """Warn once for the run, not once per image, of results that say nothing.

    Lime's scores all 0, Integrative CAM's map zero everywhere (`warn_of_empty_results`). The
    run's rows of those methods are read back (only with ``lime`` or ``integrative-cam`` among
    the methods): they are written by whichever engine ran them, this process or Ray's workers,
    now or before a resumption. Only their all-zero rows' names and segment counts are read into
    Python ([`all_zero_rows_of`][ctc_plugin.runs.results.all_zero_rows_of]), every shard read
    once for both methods.
    """
    from ctc_plugin.commands.methods import EMPTY_RESULT_METHODS, warn_of_empty_results

    if not set(EMPTY_RESULT_METHODS) & set(config.methods):
        return

    wanted = [method for method in EMPTY_RESULT_METHODS if method in config.methods]
    zero = {
        (image, method): segments
        for method, images in all_zero_rows_of(RunStore(result.out), wanted).items()
        for image, segments in images.items()
    }
    warn_of_empty_results(zero, result.images, config.lime_samples)


def explain_dataset(
    source: str | os.PathLike[str],
    methods: str | list[str] | tuple[str, ...],
    out: str | os.PathLike[str],
    *,
    images: int | None = None,
    model: str = "resnet",
    weights: str | os.PathLike[str] | None = None,
    explainer: str | os.PathLike[str] | None = None,
    resize: int | None = None,
    crop: int | str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    targets: str | list[str] | tuple[str, ...] = ("predicted",),
    segmenter: str = "superpixel",
    segments: int = 25,
    sam_checkpoint: str | os.PathLike[str] | None = None,
    sam_model_type: str = "vit_b",
    bias_sharing: str = DEFAULT_BIAS_SHARING,
    lime_samples: int = SAMPLES,
    perturbations_per_eval: int = PERTURBATIONS_PER_EVAL,
    shard_size: int = 8,
    seed: int = 1,
    threads: int = 1,
    device: str = "cpu",
    show_progress: bool = True,
    ray: bool | str | None = None,
    ray_workers: int | None = None,
) -> RunResult:
    """Explain every image of ``source`` with every method; write the results to ``out``.

    Each image is read with the model's own preprocessing (or the one ``resize``, ``crop``,
    ``mean`` and ``std`` make of it), segmented once and explained by each method for each
    target. Finished shards are written to ``out`` as Parquet (one row per image,
    target and method; see [`table_schema`][ctc_plugin.runs.results.table_schema]) and ``.npz``
    arrays (masks and attributions; see
    [`ShardRunner.run`][ctc_plugin.runs.runner.ShardRunner.run]).
    Called again with the same arguments on the same ``out`` (after a crash, a kill, or to
    add nothing), it computes only the shards that are missing.

    Args:
        source: An image folder (class subfolders optional) or ``"shapes"`` /
            ``"shapes:composite"`` (see [`resolve_source`][ctc_plugin.runs.sources.resolve_source]).
        methods: Method names: ``ctc``, ``integrative-cam``, ``explainer``,
            ``feature-ablation``, ``lime``, ``gradcam``.
        out: The run folder (new, empty, or holding this same run).
        images: Shapes images to draw; for a folder, at most this many images.
        model: A zoo family (``resnet``, ``vgg-composite``, ...), a torchvision architecture
            or ``timm:NAME`` (with ``weights``), ``hf:FOLDER`` (a ``save_pretrained`` folder) or
            ``module:callable``. On ``"shapes:composite"`` a zoo family takes its composite
            weights (``resnet``: ``resnet-composite``), as ``ctc-plugin demo`` does
            (`model_for_source`).
        weights: State-dict file for the model.
        explainer: The Explainer file of the ``explainer`` method (written by ``ctc-plugin
            explainer train`` or ``Explainer.save``, trained for the model); ``None``: the
            one shipped with a zoo model.
        resize: The images' shorter side after resizing, the aspect ratio kept (``None``: the
            model's own: 96 for zoo models, the weights' for torchvision, timm's data config,
            the folder's image processor, 224 for ``module:callable``). A
            model built for one input size needs ``resize`` and ``crop`` set to it.
        crop: The side of the centre crop, ``"none"`` to keep the whole resized image
            (``None``: the model's own, shrunk to ``resize`` where it does not fit; no crop for
            ``module:callable``).
        mean: The normalisation mean the model expects (3 values, with ``std``; ``None``: the
            model's own).
        std: The normalisation standard deviation (with ``mean``).
        targets: What to explain: ``"predicted"``, ``"label"`` (the folder's class or the shapes
            label), a class index or name; several give several rows per image and method.
        segmenter: ``"superpixel"``, ``"grid"`` or ``"sam"``.
        segments: About how many segments.
        sam_checkpoint: The SAM checkpoint, for ``segmenter="sam"`` (SAM masks are cached).
        sam_model_type: Its architecture.
        bias_sharing: CTC's bias sharing.
        lime_samples: Lime's samples.
        perturbations_per_eval: Copies per forward pass of FeatureAblation, Lime and CTC with
            ``"reference"`` sharing (``"proportional"`` takes every copy in one pass).
        shard_size: Images per shard: the unit that is written, and redone after a kill.
        seed: Seed of each shard's random state and of the shapes images.
        threads: Torch CPU threads per shard (part of the configuration: results repeat bit
            for bit only on the same count).
        device: Where the model runs (``cpu``, ``cuda``, ...).
        show_progress: Show a progress bar over all images (finished shards counted).
        ray: Run the shards on Ray instead of in this process: ``True`` starts a local
            cluster, a string is a cluster's address (see
            [`run_on_ray`][ctc_plugin.resumable.cluster.run_on_ray]). Not part of the
            configuration: the results are the same, and either engine resumes the other's run.
        ray_workers: CPUs of the local Ray cluster that ``ray=True`` starts (``None``: all);
            refused without ``ray=True``.

    Returns:
        A [`RunResult`][ctc_plugin.runs.engine.RunResult]; ``.table()`` reads every row.

    Raises:
        SourceError: For a source with no usable images.
        ConfigMismatchError: If ``out`` holds a run with other arguments.
        PermissionError: If ``out`` cannot be written and holds no run, or this run with
            shards left (this run finished there is run again as a no-op, writing nothing).
        RayUnavailableError: If ``ray`` is given and Ray is not installed.
        RayConnectionError: If ``ray`` is the address of a Ray cluster that cannot be
            reached.
        ValueError: For unknown methods and invalid numbers (a ``crop`` larger than
            ``resize``, ``mean`` without ``std``), ``ray_workers`` without
            ``ray=True``, ``sam_checkpoint`` with another segmenter than ``"sam"``, an
            ``out`` that holds another kind of run, or finished shards of this run whose
            files cannot be read (deleted or cut short; the message names the ``.parquet``
            files to delete so that the same call computes them again).
        CLIError: For a model, device, segmenter or target that cannot be used, or a zoo
            model of the other split on the bundled images; checked on the first image before
            ``out`` is set up (`checked_runner`); and, once every other shard is finished,
            [`UnreadableImageError`][ctc_plugin.runs.runner.UnreadableImageError] for images
            that cannot be read (damaged past their headers, or removed meanwhile), naming
            each: their shards are left for the same call to compute once they are replaced.

    Examples:
        >>> from ctc_plugin.runs import explain_dataset
        >>> run = explain_dataset("shapes", ["ctc", "gradcam"], "out/run", images=16)
        >>> run.table().to_pandas().groupby("method").seconds.mean()
    """
    from ctc_plugin.commands.explain_setup import check_sam_checkpoint

    check_sam_checkpoint(segmenter, sam_checkpoint)  # it would be ignored
    model = model_for_source(model, source)
    config = RunConfig(
        methods=(methods,) if isinstance(methods, str) else tuple(methods),
        model=model,
        weights=os.fspath(weights) if weights is not None else None,
        explainer=os.fspath(explainer) if explainer is not None else None,
        resize=resize,
        crop=crop,
        mean=mean,
        std=std,
        targets=(targets,) if isinstance(targets, str) else tuple(targets),
        segmenter=segmenter,
        segments=segments,
        sam_checkpoint=os.fspath(sam_checkpoint) if sam_checkpoint is not None else None,
        sam_model_type=sam_model_type,
        bias_sharing=bias_sharing,
        lime_samples=lime_samples,
        perturbations_per_eval=perturbations_per_eval,
        shard_size=shard_size,
        seed=seed,
        threads=threads,
        device=device,
    )
    if not ray:  # a device this machine lacks is named first (on Ray the workers check it)
        from ctc_plugin.commands.explain_setup import resolve_device

        resolve_device(config.device)
    resolved = _resolve_run_source(source, images, seed, out)
    _refuse_out_inside(resolved, out)
    skipped = resolved.skipped_note()
    if skipped:
        warnings.warn(skipped, UserWarning, stacklevel=2)
    job = ExplainJob(config, resolved)
    try:
        check_start(job, out)  # another run in out is named first
        check_finished_images(job, out)
        runner = checked_runner(job, ray)  # before the run folder is set up
        _warn_of_drawn_weights(config, runner.loaded.network)
        result = run_job(
            job, out, show_progress=show_progress, ray=ray,
            ray_workers=ray_workers, runner=None if ray else runner,
        )  # fmt: skip
    except ConfigMismatchError as error:
        raise _restated_mismatch(error, out, resolved) from None
    _warn_of_empty_results(config, result)
    return RunResult(result.out, result.images, result.shards, result.computed, result.seconds)
