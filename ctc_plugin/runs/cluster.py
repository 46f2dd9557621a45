"""The same plan on Ray: segmentation workers and method workers, results identical.

``explain_dataset(..., ray=...)`` hands the unfinished shards here. Two pools of Ray actors,
each holding a [`ShardRunner`][ctc_plugin.runs.engine.ShardRunner] that loads only its part:

- segmentation actors ([`ShardRunner.segment`][ctc_plugin.runs.engine.ShardRunner.segment]), one
  GPU each when the cluster has GPUs (SAM), else one CPU;
- method actors ([`ShardRunner.run`][ctc_plugin.runs.engine.ShardRunner.run] with the shard's
  masks), one CPU each.

A shard's masks go from its segmentation actor to a method actor through Ray's object store
(unchanged), and each method actor explains a shard on the configured thread count from the
shard's own random state, as the embedded engine does: the results are the same bit for bit.
The driver writes every finished shard (atomically, as the embedded engine) and advances the
progress bar, so a Ray run resumes an embedded one and the other way round.

Ray is an optional extra: ``pip install 'ctc-plugin[ray]'``.
"""

from __future__ import annotations

from typing import Any

from ctc_plugin.runs.plan import RunConfig, Shard
from ctc_plugin.runs.sources import Source
from ctc_plugin.runs.store import RunStore

__all__ = ["RayUnavailableError", "run_on_ray"]


class RayUnavailableError(ImportError):
    """``ray=`` / ``--ray`` was asked for and Ray is not installed."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise RayUnavailableError(
            "--ray needs Ray, which is not installed: pip install 'ctc-plugin[ray]' (or pip "
            "install ray), or run without --ray (the embedded engine needs no service)"
        ) from error
    return ray


def run_on_ray(
    config: RunConfig,
    source: Source,
    shards: list[Shard],
    store: RunStore,
    progress: Any,
    address: str | None = None,
    workers: int | None = None,
) -> None:
    """Run ``shards`` on Ray and write each one to ``store`` as it finishes.

    Args:
        config: The run's configuration.
        source: Its images.
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
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        if address is None:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    try:
        _run(ray, config, source, shards, store, progress)
    finally:
        if started:
            ray.shutdown()


def _run(
    ray: Any, config: RunConfig, source: Source, shards: list[Shard], store: RunStore, progress: Any
) -> None:
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 1))
    gpus = int(resources.get("GPU", 0))
    # one actor per CPU (half a CPU each on a one-CPU cluster, so that both pools fit)
    share = 1.0 if cpus >= 2 else cpus / 2
    slots = max(2, int(cpus))
    segmenting = max(1, min(len(shards), gpus if gpus else slots // 2))
    explaining = max(1, min(len(shards), slots - (0 if gpus else segmenting)))

    segment_options = {"num_gpus": 1, "num_cpus": 0} if gpus else {"num_cpus": share}
    Segmenter = ray.remote(**segment_options)(_Worker)  # noqa: N806
    Explainer = ray.remote(num_cpus=share)(_Worker)  # noqa: N806
    segmenters = [Segmenter.remote(config, source, True, False) for _ in range(segmenting)]
    explainers = [Explainer.remote(config, source, False, True) for _ in range(explaining)]
    pending = {}
    for number, shard in enumerate(shards):
        masks = segmenters[number % segmenting].segment.remote(shard)
        result = explainers[number % explaining].run.remote(shard, masks)
        pending[result] = shard
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        shard = pending.pop(done[0])
        table, arrays = ray.get(done[0])
        store.write_shard(shard.name, table, arrays)
        progress.update(len(shard.images))


class _Worker:
    """A Ray actor around a [`ShardRunner`][ctc_plugin.runs.engine.ShardRunner]."""

    def __init__(self, config: RunConfig, source: Source, segment: bool, explain: bool) -> None:
        from ctc_plugin.runs.engine import ShardRunner

        self.runner = ShardRunner(config, source, segment=segment, explain=explain)

    def segment(self, shard: Shard) -> dict[int, tuple[Any, float]]:
        """The shard's masks."""
        return self.runner.segment(shard)

    def run(self, shard: Shard, masks: dict[int, tuple[Any, float]]) -> tuple[Any, Any]:
        """The shard's table and arrays, from its masks."""
        return self.runner.run(shard, masks=masks)
