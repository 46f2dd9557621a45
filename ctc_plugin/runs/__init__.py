"""Explain whole data sets: a deterministic plan of shards, run and stored resumably.

``plan`` cuts the images of a source (``sources``) into shards and ``engine`` makes the
``explain-dataset`` job of them: [`run_job`][ctc_plugin.resumable.job.run_job] (the engine
``ctc-plugin benchmark`` runs on too) explains the shards that are not finished yet, in this
process or on Ray, and writes each finished shard atomically (Parquet table plus ``.npz``
arrays, [`RunStore`][ctc_plugin.resumable.store.RunStore]) next to the run's manifest. The
command line's ``ctc-plugin explain-dataset`` (``command``) calls
[`explain_dataset`][ctc_plugin.runs.engine.explain_dataset].
"""

from __future__ import annotations

from ctc_plugin.resumable import ConfigMismatchError, RayUnavailableError, RunStore, Shard
from ctc_plugin.runs.engine import (
    ExplainJob,
    RunResult,
    explain_dataset,
    explained_pixels,
    read_results,
)
from ctc_plugin.runs.plan import RunConfig, plan_shards
from ctc_plugin.runs.runner import ShardRunner
from ctc_plugin.runs.sources import ImageRef, Source, SourceError, resolve_source

__all__ = [
    "ConfigMismatchError",
    "ExplainJob",
    "ImageRef",
    "RayUnavailableError",
    "RunConfig",
    "RunResult",
    "RunStore",
    "Shard",
    "ShardRunner",
    "Source",
    "SourceError",
    "explain_dataset",
    "explained_pixels",
    "plan_shards",
    "read_results",
    "resolve_source",
]
