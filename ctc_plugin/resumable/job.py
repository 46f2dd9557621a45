"""A job cut into shards, run embedded or on Ray, each finished shard stored atomically.

A [`Job`][ctc_plugin.resumable.job.Job] says what a run computes: its manifest (the
configuration a resumed run must share), its list of [`Shard`][ctc_plugin.resumable.job.Shard]s
and a runner that turns one shard into a Parquet table and a few arrays.
[`run_job`][ctc_plugin.resumable.job.run_job] does the rest for every job alike: it opens (or
resumes) the output folder, skips the finished shards, runs the others in this process or on
Ray ([`run_on_ray`][ctc_plugin.resumable.cluster.run_on_ray]) and writes each one as it finishes
([`RunStore`][ctc_plugin.resumable.store.RunStore]), with one progress bar over the whole run.

``ctc-plugin explain-dataset`` is one job
([`ExplainJob`][ctc_plugin.runs.engine.ExplainJob]), ``ctc-plugin benchmark`` another
([`BenchmarkJob`][ctc_plugin.harness.benchmark.BenchmarkJob]).

A job is sent to Ray workers as it is (pickled), so it holds plain data: its configuration and
its plan, not loaded models. A runner must compute a shard from a fixed random state of its own
(not from whatever ran before it in the same process), so that any shard computed anywhere, in
any order, equals the shard of an uninterrupted single-process run.
"""

from __future__ import annotations

import inspect
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ctc_plugin.resumable.atomic import read_only_folder
from ctc_plugin.resumable.store import MANIFEST, RunStore
from ctc_plugin.resumable.threads import torch_threads
from ctc_plugin.wording import counted, first_names

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

__all__ = ["Job", "JobResult", "Runner", "Shard", "ShardInputError", "run_job"]


class ShardInputError(Exception):
    """A shard's own input cannot be used (an image file damaged past its header).

    A runner raises it where only this shard is stopped by it: the engine leaves the shard
    undone, computes the others, and raises it at the end
    (`shards_left_by_their_input`), so the same command, once the input is fixed, computes only
    that shard. Any other exception a runner raises stops the run at once.

    Attributes:
        item: The input that stopped the shard (an image's name), for the message that names
            every shard left so; ``None`` where not given.
    """

    item: str | None = None


@dataclass(frozen=True)
class Shard:
    """One unit of work: written together, redone together after a kill.

    Attributes:
        index: Shard number ``0..S-1`` in the plan.
        images: The images it computes (indices in the job's own numbering); the progress bar
            counts them.
        key: File stem of the shard, when the job names its shards (the benchmark names them
            after the piece); ``None``: ``shard-<index>``.
        affinity: Shards with the same affinity share what a runner prepares for them (the
            benchmark's pieces of one model share the model, its data and features): on Ray
            they go to the same worker where the plan allows (see
            [`ShardQueue`][ctc_plugin.resumable.cluster.ShardQueue]). ``None``: nothing shared.
            Never changes a shard's results.
    """

    index: int
    images: tuple[int, ...]
    key: str | None = None
    affinity: str | None = None

    @property
    def name(self) -> str:
        """File stem of the shard: its ``key``, or ``shard-00012``."""
        return self.key if self.key is not None else f"shard-{self.index:05d}"


class Runner(Protocol):
    """Computes shards; made once per process (or Ray worker).

    [`Job.runner`][ctc_plugin.resumable.job.Job.runner] makes it.
    """

    def run(
        self, shard: Shard, progress: Any = None, prepared: Any = None
    ) -> tuple[pa.Table, dict[str, np.ndarray]]:
        """The shard's table and arrays.

        Args:
            shard: The shard.
            progress: A tqdm bar (or ``None``), advanced by ``len(shard.images)`` in all.
            prepared: What [`prepare`][ctc_plugin.resumable.job.Runner.prepare] returned for
                this shard in another worker (jobs with a preparation stage), or ``None``: the
                runner prepares it itself.
        """
        ...  # pragma: no cover

    def prepare(self, shard: Shard) -> Any:
        """The shard's preparation (segment masks, say), for jobs with ``prepare_stage``."""
        ...  # pragma: no cover


class Job(Protocol):
    """What a resumable run computes.

    Attributes:
        name: The job's kind (``"explain-dataset"``, ``"benchmark"``): stored in the manifest,
            shown on the progress bar.
        prepare_stage: Whether shards have a preparation stage worth its own Ray workers (GPU
            workers when the cluster has GPUs): the SAM segmentation of ``explain-dataset``.
        threads: Torch CPU threads every shard runs on, in this process and on every Ray
            worker (``None``: each process's own count, so results may differ in the last
            bits between engines).
    """

    name: str
    prepare_stage: bool
    threads: int | None

    def manifest(self, stored: dict[str, Any] | None = None) -> dict[str, Any]:
        """What a run resumed in the same folder must share (``{"config": {...}, ...}``).

        Options under ``"config"`` are compared one by one (a
        [`ConfigMismatchError`][ctc_plugin.resumable.atomic.ConfigMismatchError] names each),
        other keys whole. ``stored`` is the manifest of the run in the folder (``None``
        without one): options that change no result may take its values, so that a run is
        resumed with or without them (a job whose ``manifest`` takes no argument is called
        without it).
        """
        ...  # pragma: no cover

    def shards(self) -> list[Shard]:
        """The plan: every shard of the run, in order."""
        ...  # pragma: no cover

    def plan(self) -> dict[str, Any] | None:
        """Plain data that describes the plan to readers of the folder, or ``None``.

        Written to ``plan.json`` on every start (replacing the last one), never compared.
        """
        ...  # pragma: no cover

    def runner(self, *, prepare: bool = True, run: bool = True) -> Runner:
        """A runner that loads what ``prepare`` and/or ``run`` need (once per process)."""
        ...  # pragma: no cover


@dataclass(frozen=True)
class JobResult:
    """What [`run_job`][ctc_plugin.resumable.job.run_job] did.

    Attributes:
        out: The output folder.
        images: Images in the plan (summed over its shards).
        shards: Shards in the plan.
        computed: Shards computed by this call (the others were finished before, or by
            another process on the same folder meanwhile).
        seconds: Wall-clock seconds of this call.
    """

    out: Path
    images: int
    shards: int
    computed: int
    seconds: float


def run_job(
    job: Job,
    out: str | os.PathLike[str],
    *,
    show_progress: bool = True,
    ray: bool | str | None = None,
    ray_workers: int | None = None,
    runner: Runner | None = None,
) -> JobResult:
    """Run every unfinished shard of ``job`` and store it in ``out``.

    In this process, shards are shared with other processes running the same job on the same
    ``out``: each shard is computed by one of them (see
    [`RunStore.claim`][ctc_plugin.resumable.store.RunStore.claim]).

    Args:
        job: The job.
        out: The run folder (new, empty, or holding this same run).
        show_progress: Show a progress bar over all the plan's images (finished shards counted).
        ray: Run on Ray: ``True`` starts a local cluster, a string is a cluster's address (see
            [`run_on_ray`][ctc_plugin.resumable.cluster.run_on_ray]); ``None`` or ``False``
            runs in this process. Not part of the manifest: either engine resumes the other's
            run.
        ray_workers: CPUs of the local Ray cluster that ``ray=True`` starts (``None``: all);
            refused without ``ray=True``.
        runner: The runner of the embedded engine (``None``: ``job.runner()``, made only when
            this process computes a shard).

    Raises:
        ConfigMismatchError: If ``out`` holds a run with another manifest.
        PermissionError: If ``out`` is a folder this process cannot write that holds no run,
            or this run with shards left; this run finished there is done, and nothing is
            written (a read-only archive of a finished run can be run again).
        ValueError: For ``ray_workers`` below 1, or given without ``ray=True`` (a cluster's
            address has its own workers), and for finished shards whose files cannot be read
            (deleted or cut short: see
            [`RunStore.check_readable`][ctc_plugin.resumable.store.RunStore.check_readable]),
            before any work.
        RayUnavailableError: If ``ray`` is given and Ray is not installed (before any work).
        RayConnectionError: If ``ray`` is the address of a Ray cluster that cannot be
            reached.
        ShardInputError: Once every other shard is finished, where a runner raised it for a
            shard (an image damaged past its header): that shard is left for the same call to
            compute once its input is fixed.
    """
    from tqdm.auto import tqdm

    if ray_workers is not None and (ray is not True or ray_workers < 1):
        raise ValueError(
            f"ray_workers={ray_workers} sizes the local Ray cluster that ray=True starts: "
            + (
                "give at least 1"
                if ray is True
                else f"drop ray_workers, or give ray=True instead of ray={ray!r}"
            )
        )
    if ray:  # before out is set up: a missing Ray is one clear error
        from ctc_plugin.resumable.cluster import import_ray

        import_ray()
    start = time.perf_counter()
    shards = job.shards()
    store = RunStore(out)
    if read_only_folder(store.root):  # a finished run: nothing to write, nothing written
        _check_finished_read_only(job, store, shards)
        total = sum(len(shard.images) for shard in shards)
        return JobResult(store.root, total, len(shards), 0, time.perf_counter() - start)
    manifest = _manifest(job, store)
    # another run is named first, then a finished shard that cannot be read (before the
    # start rewrites plan.json); a start that finished no shard (a wrong option) gives way
    store.check_start(manifest, restart_unfinished=True)
    _check_finished_readable(store, shards)
    store.open(manifest, plan=job.plan(), restart_unfinished=True)
    left = [shard for shard in shards if not store.is_finished(shard.name)]
    total = sum(len(shard.images) for shard in shards)
    computed = len(left)
    if left:
        done = total - sum(len(shard.images) for shard in left)
        with tqdm(
            total=total, initial=done, desc=job.name, unit="image", disable=not show_progress
        ) as progress:
            if ray:
                from ctc_plugin.resumable.cluster import run_on_ray

                address = ray if isinstance(ray, str) else None
                run_on_ray(job, left, store, progress, address, ray_workers)
            else:
                computed = _run_embedded(job, left, store, progress, runner)
    return JobResult(store.root, total, len(shards), computed, time.perf_counter() - start)


def check_start(job: Job, out: str | os.PathLike[str]) -> None:
    """Refuse now, writing nothing, an ``out`` that holds another run than ``job``'s.

    What [`run_job`][ctc_plugin.resumable.job.run_job] would refuse first
    ([`RunStore.check_start`][ctc_plugin.resumable.store.RunStore.check_start]): a job that
    checks its own options before ``run_job`` calls this first, so that a folder of another run
    is named before an option that only that other run's settings would explain.

    Raises:
        ConfigMismatchError: If ``out`` holds a run with another manifest (that finished a
            shard).
        ValueError: If it holds another kind of job's run, or one of another version (or,
            on read-only storage, this run finished with shard files that cannot be read).
        PermissionError: If ``out`` cannot be written and holds no run, or this run with
            shards left.
    """
    store = RunStore(out)
    if read_only_folder(store.root):
        _check_finished_read_only(job, store, job.shards())
        return
    store.check_start(_manifest(job, store), restart_unfinished=True)


def _check_finished_read_only(job: Job, store: RunStore, shards: list[Shard]) -> None:
    """Refuse a start in a folder this process cannot write unless it holds this run, finished.

    A finished run on read-only storage (an archive, a shared mount) can be run again as a
    no-op, as a writable one can; its results are read as usual.

    Raises:
        ConfigMismatchError: If the folder holds another run.
        PermissionError: If it holds no run, or this run with shards left to compute.
        ValueError: If this run's finished shards have files that cannot be read.
    """
    store.check_start(_manifest(job, store))  # another run is named first, as always
    if not (store.root / MANIFEST).exists():
        left = "holds no run to resume"
    else:
        count = sum(not store.is_finished(shard.name) for shard in shards)
        if not count:
            _check_finished_readable(store, shards)
            return
        left = f"holds this run with {counted(count, 'shard')} left to compute"
    raise PermissionError(
        f"cannot write into {store.root} (read-only, or not yours), and it {left}: make it "
        "writable, or give another --out"
    )


def _check_finished_readable(store: RunStore, shards: list[Shard]) -> None:
    """Refuse a resume over finished shards of the plan whose files cannot be read.

    A resumed run that says it is done must be readable: a shard file deleted or cut short
    since it was written is named (see
    [`RunStore.check_readable`][ctc_plugin.resumable.store.RunStore.check_readable]) before
    any work, instead of being counted as finished.

    Raises:
        ValueError: Naming the shards and the ``.parquet`` files to delete to compute them again.
    """
    store.check_readable([shard.name for shard in shards if store.is_finished(shard.name)])


def _manifest(job: Job, store: RunStore) -> dict[str, Any]:
    """What a run of ``job`` stores as its manifest: the job's kind and its own manifest.

    The job's manifest is made against the one ``store`` holds, if any (of the same kind).
    """
    try:
        stored: dict[str, Any] | None = store.manifest()
    except (FileNotFoundError, ValueError, OSError):  # no run, or one of another version
        stored = None
    if stored is not None and stored.get("job") != job.name:
        stored = None
    takes_stored = bool(inspect.signature(job.manifest).parameters)  # older jobs: manifest()
    return {"job": job.name, **(job.manifest(stored) if takes_stored else job.manifest())}


def _run_embedded(
    job: Job, left: list[Shard], store: RunStore, progress: Any, runner: Runner | None
) -> int:
    """Run ``left`` in this process, sharing them with other processes on the same folder.

    Each shard is claimed first ([`RunStore.claim`][ctc_plugin.resumable.store.RunStore.claim]):
    a shard another process is computing is passed over, and waited for once the others are
    done (then computed here only if that process died before writing it). A shard finished
    elsewhere meanwhile is not computed again. Returns how many shards this process computed.
    """
    made: list[Runner] = [runner] if runner is not None else []  # made for the first shard
    stopped: list[ShardInputError] = []  # shards left undone by their own input

    def run(shard: Shard, wait: bool) -> bool | None:
        """Compute ``shard`` if claimed and unfinished: ``None`` when another holds it."""
        with store.claim(shard.name, wait) as held:
            if not held:
                return None
            if store.is_finished(shard.name):  # written by another process meanwhile
                progress.update(len(shard.images))
                return False
            if not made:
                made.append(job.runner())
            try:
                with torch_threads(job.threads):
                    table, arrays = made[0].run(shard, progress)
            except ShardInputError as error:  # the other shards go on; raised at the end
                stopped.append(error)
                return False
            store.write_shard(shard.name, table, arrays)
            return True

    outcomes = [run(shard, wait=False) for shard in left]
    passed_over = [shard for shard, outcome in zip(left, outcomes) if outcome is None]
    outcomes += [run(shard, wait=True) for shard in passed_over]
    if stopped:
        raise shards_left_by_their_input(stopped)
    return sum(outcome is True for outcome in outcomes)


def shards_left_by_their_input(errors: list[ShardInputError]) -> ShardInputError:
    """The one error a run raises for the shards its input left undone (the others finished).

    The first shard's error, as its runner raised it (its message says what to do); where
    several shards were stopped, one of its type that also names the others' inputs.
    """
    first, others = errors[0], errors[1:]
    if not others:
        return first
    items = [error.item or str(error) for error in others]
    combined = type(first)(
        f"{first}; {counted(len(others), 'more shard')} stopped on its input too "
        f"({first_names(items)}): fix {'it' if len(others) == 1 else 'them'} as well"
    )
    combined.item = first.item
    return combined
