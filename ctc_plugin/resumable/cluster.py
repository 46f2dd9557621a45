"""The same plan on Ray: workers hold a job's runner, results identical to the embedded run.

[`run_job`][ctc_plugin.resumable.job.run_job] hands the unfinished shards here when asked for
Ray. Every Ray actor makes its own runner from the job (sent to it pickled) and computes shards
from their own random state, as the embedded engine does: the results are the same bit for bit.
A job with a preparation stage (``explain-dataset``'s segmentation) gets two pools of actors:

- preparation actors ([`Runner.prepare`][ctc_plugin.resumable.job.Runner.prepare]), one GPU
  each when the cluster has GPUs (SAM), else one CPU;
- run actors ([`Runner.run`][ctc_plugin.resumable.job.Runner.run] with the shard's
  preparation), one CPU each.

A shard's preparation goes from its actor to a run actor through Ray's object store
(unchanged). Other jobs (the benchmark) get one pool of run actors, one CPU each.

Run actors get one shard at a time from a [`ShardQueue`][ctc_plugin.resumable.cluster.ShardQueue]:
shards of the same [`affinity`][ctc_plugin.resumable.job.Shard] (the benchmark's pieces of one
model) go to the same actor, which prepares what they share (the model, its data and features)
once; an actor that runs out of work takes a group no actor has started, and only when there
is none left helps with the largest group under way. The driver writes every finished shard
(atomically, as the embedded engine) and advances the progress bar, so a Ray run resumes an
embedded one and the other way round.

Ray is an optional extra: ``pip install '.[ray]'`` in the package's clone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any

from ctc_plugin.resumable.store import RunStore
from ctc_plugin.resumable.threads import torch_threads

if TYPE_CHECKING:  # pragma: no cover
    from ctc_plugin.resumable.job import Job, Shard

__all__ = [
    "RayConnectionError",
    "RayError",
    "RayUnavailableError",
    "ShardQueue",
    "import_ray",
    "run_on_ray",
]


class RayError(Exception):
    """``ray=`` / ``--ray`` was asked for and Ray cannot be used (the message says why)."""


class RayUnavailableError(RayError, ImportError):
    """``ray=`` / ``--ray`` was asked for and Ray is not installed."""


class RayConnectionError(RayError, ConnectionError):
    """The Ray cluster at the given address cannot be reached."""


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        RayUnavailableError: If Ray is not installed (the message says how to install it).
    """
    try:
        import ray
    except ImportError as error:
        raise RayUnavailableError(
            "running on Ray (--ray, or ray= in Python) needs Ray, which is not installed: pip "
            "install 'ray>=2.9' (or the extra, "
            "pip install '.[ray]' in the package's clone), or run without --ray (the "
            "embedded engine needs no service)"
        ) from error
    return ray


def run_on_ray(
    job: Job,
    shards: list[Shard],
    store: RunStore,
    progress: Any,
    address: str | None = None,
    workers: int | None = None,
) -> None:
    """Run ``shards`` on Ray and write each one to ``store`` as it finishes.

    Args:
        job: The job (sent to every actor, which makes its own runner).
        shards: The shards left to run.
        store: The run folder.
        progress: A tqdm bar, advanced by a shard's images when it is written.
        address: A Ray cluster's address (``ray://host:10001``, ``auto``); ``None`` starts a
            local cluster (or joins the one this process already started).
        workers: CPUs of the local cluster (``None``: all of this machine's); ignored with
            ``address``.

    Raises:
        RayUnavailableError: If Ray is not installed.
        RayConnectionError: If the cluster at ``address`` cannot be reached.
        ShardInputError: After every other shard was written, where shards were stopped by
            their own input (see `shards_left_by_their_input`).
        Exception: What a runner raised on a worker (its own exception, the worker's
            traceback chained to it), after the shards finished before it were written.
    """
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        if address is None:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            try:
                ray.init(address=address, log_to_driver=False)
            except ConnectionError as error:
                first = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise RayConnectionError(
                    f"--ray {address}: cannot reach a Ray cluster there ({first}); start one "
                    "(ray start --head) or check the address, or give --ray without ADDRESS "
                    "to start a local cluster for this run"
                ) from error
        started = True
    try:
        _run(ray, job, shards, store, progress)
    finally:
        if started:
            ray.shutdown()


class ShardQueue:
    """Hands shards to workers one at a time, each affinity group to one worker if it can.

    Shards with the same [`affinity`][ctc_plugin.resumable.job.Shard] form a group (a shard
    without one is a group of its own); groups start in plan order. A worker asking for a shard
    gets the next one of the group it works on; when that group is empty, the first group no
    worker has started; and when every group left is under way on other workers, a shard from
    the end of the one with most shards left (so that no worker idles while work is left).

    Args:
        shards: The shards, in plan order.

    Examples:
        >>> from ctc_plugin.resumable import Shard
        >>> queue = ShardQueue([Shard(i, (i,), affinity="ab"[i // 2]) for i in range(4)])
        >>> [queue.next(worker).index for worker in (0, 1, 0, 1)]
        [0, 2, 1, 3]
    """

    def __init__(self, shards: Iterable[Shard]) -> None:
        self.groups: dict[Hashable, deque[Shard]] = {}
        for shard in shards:
            key = shard.affinity if shard.affinity is not None else ("shard", shard.index)
            self.groups.setdefault(key, deque()).append(shard)
        self.current: dict[Hashable, Hashable] = {}  # worker -> the group it works on

    def __len__(self) -> int:
        """Shards not handed out yet."""
        return sum(len(group) for group in self.groups.values())

    def next(self, worker: Hashable) -> Shard | None:
        """The next shard for ``worker``, or ``None`` when every shard was handed out."""
        key = self.current.get(worker)
        if key in self.groups:
            return self._take(key, worker)
        started = set(self.current.values())
        fresh = next((key for key in self.groups if key not in started), None)
        if fresh is not None:
            return self._take(fresh, worker)
        if not self.groups:
            self.current.pop(worker, None)
            return None
        largest = max(self.groups, key=lambda key: len(self.groups[key]))
        return self._take(largest, worker, from_end=True)

    def _take(self, key: Hashable, worker: Hashable, from_end: bool = False) -> Shard:
        group = self.groups[key]
        shard = group.pop() if from_end else group.popleft()
        if not group:
            del self.groups[key]
        self.current[worker] = key
        return shard


def task_error(error: BaseException) -> BaseException:
    """The exception a runner raised, from the ``RayTaskError`` (chain) that carries it."""
    from ray.exceptions import RayTaskError

    while isinstance(error, RayTaskError) and getattr(error, "cause", None) is not None:
        error = error.cause
    return error


def _run(ray: Any, job: Job, shards: list[Shard], store: RunStore, progress: Any) -> None:
    from ray.exceptions import RayTaskError

    from ctc_plugin.resumable.job import ShardInputError, shards_left_by_their_input

    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 1))
    gpus = int(resources.get("GPU", 0))
    staged = job.prepare_stage
    # one actor per CPU (half a CPU each on a one-CPU cluster when both pools need room)
    share = 1.0 if cpus >= 2 or not staged else cpus / 2
    slots = max(2 if staged else 1, int(cpus))
    preparing = max(1, min(len(shards), gpus if gpus else slots // 2)) if staged else 0
    running = max(1, min(len(shards), slots - (0 if gpus else preparing)))

    Runner = ray.remote(num_cpus=min(share, cpus))(_Worker)  # noqa: N806
    runners = [Runner.remote(job, False, True) for _ in range(running)]
    prepared: dict[int, Any] = {}
    if staged:  # every preparation is queued at once: the preparation actors never wait
        options = {"num_gpus": 1, "num_cpus": 0} if gpus else {"num_cpus": share}
        Preparer = ray.remote(**options)(_Worker)  # noqa: N806
        preparers = [Preparer.remote(job, True, False) for _ in range(preparing)]
        for number, shard in enumerate(shards):
            prepared[shard.index] = preparers[number % preparing].prepare.remote(shard)
    queue = ShardQueue(shards)
    pending: dict[Any, tuple[Shard, int]] = {}

    def give(worker: int) -> None:
        shard = queue.next(worker)
        if shard is not None:
            result = runners[worker].run.remote(shard, prepared.get(shard.index))
            pending[result] = (shard, worker)

    for worker in range(running):
        give(worker)
    stopped: list[ShardInputError] = []  # shards left undone by their own input
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        shard, worker = pending.pop(done[0])
        try:
            table, arrays = ray.get(done[0])
        except RayTaskError as error:
            cause = task_error(error)
            if not isinstance(cause, ShardInputError):
                raise cause from error
            stopped.append(cause)  # the other shards go on, as in the embedded engine
        else:
            store.write_shard(shard.name, table, arrays)
            progress.update(len(shard.images))
        give(worker)
    if stopped:
        raise shards_left_by_their_input(stopped)


class _Worker:
    """A Ray actor around one runner of the job.

    A runner that cannot be made (a model or a segmenter that does not load) is raised by the
    actor's first shard, as the embedded engine raises it: an actor that died in its creation
    would reach the driver as Ray's own error, not as the runner's.
    """

    def __init__(self, job: Job, prepare: bool, run: bool) -> None:
        self.threads = job.threads
        self.runner: Any = None
        self.error: Exception | None = None
        try:
            with torch_threads(self.threads):
                self.runner = job.runner(prepare=prepare, run=run)
        except Exception as error:  # raised again by every shard
            self.error = error

    def prepare(self, shard: Shard) -> Any:
        """The shard's preparation."""
        if self.error is not None:
            raise self.error
        with torch_threads(self.threads):
            return self.runner.prepare(shard)

    def run(self, shard: Shard, prepared: Any) -> tuple[Any, Any]:
        """The shard's table and arrays (from its preparation, when there is one)."""
        if self.error is not None:
            raise self.error
        with torch_threads(self.threads):
            return self.runner.run(shard, prepared=prepared)
