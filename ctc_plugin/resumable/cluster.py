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
(unchanged). Other jobs (the benchmark) get one pool of run actors, one CPU each. The driver
writes every finished shard (atomically, as the embedded engine) and advances the progress bar,
so a Ray run resumes an embedded one and the other way round.

Ray is an optional extra: ``pip install 'ctc-plugin[ray]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ctc_plugin.resumable.store import RunStore
from ctc_plugin.resumable.threads import torch_threads

if TYPE_CHECKING:  # pragma: no cover
    from ctc_plugin.resumable.job import Job, Shard

__all__ = ["RayUnavailableError", "import_ray", "run_on_ray"]


class RayUnavailableError(ImportError):
    """``ray=`` / ``--ray`` was asked for and Ray is not installed."""


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        RayUnavailableError: If Ray is not installed (the message says how to install it).
    """
    try:
        import ray
    except ImportError as error:
        raise RayUnavailableError(
            "--ray needs Ray, which is not installed: pip install 'ctc-plugin[ray]' (or pip "
            "install ray), or run without --ray (the embedded engine needs no service)"
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
    """
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        if address is None:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    try:
        _run(ray, job, shards, store, progress)
    finally:
        if started:
            ray.shutdown()


def _run(ray: Any, job: Job, shards: list[Shard], store: RunStore, progress: Any) -> None:
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
    preparers = []
    if staged:
        options = {"num_gpus": 1, "num_cpus": 0} if gpus else {"num_cpus": share}
        Preparer = ray.remote(**options)(_Worker)  # noqa: N806
        preparers = [Preparer.remote(job, True, False) for _ in range(preparing)]
    pending = {}
    for number, shard in enumerate(shards):
        prepared = preparers[number % preparing].prepare.remote(shard) if staged else None
        result = runners[number % running].run.remote(shard, prepared)
        pending[result] = shard
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        shard = pending.pop(done[0])
        table, arrays = ray.get(done[0])
        store.write_shard(shard.name, table, arrays)
        progress.update(len(shard.images))


class _Worker:
    """A Ray actor around one runner of the job."""

    def __init__(self, job: Job, prepare: bool, run: bool) -> None:
        self.threads = job.threads
        with torch_threads(self.threads):
            self.runner = job.runner(prepare=prepare, run=run)

    def prepare(self, shard: Shard) -> Any:
        """The shard's preparation."""
        with torch_threads(self.threads):
            return self.runner.prepare(shard)

    def run(self, shard: Shard, prepared: Any) -> tuple[Any, Any]:
        """The shard's table and arrays (from its preparation, when there is one)."""
        with torch_threads(self.threads):
            return self.runner.run(shard, prepared=prepared)
