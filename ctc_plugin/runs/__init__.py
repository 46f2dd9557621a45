"""Explain whole data sets: a deterministic plan of shards, run and stored resumably.

``plan`` cuts the images of a source (``sources``) into shards, ``engine`` explains the
shards that are not finished yet and ``store`` writes each finished shard atomically (Parquet
table plus ``.npz`` arrays) next to the run's manifest. The command line's
``ctc-plugin explain-dataset`` (``command``) calls
[`explain_dataset`][ctc_plugin.runs.engine.explain_dataset].
"""

from __future__ import annotations

from ctc_plugin.runs.engine import RunResult, ShardRunner, explain_dataset, read_results
from ctc_plugin.runs.plan import RunConfig, Shard, plan_shards
from ctc_plugin.runs.sources import ImageRef, Source, SourceError, resolve_source
from ctc_plugin.runs.store import ConfigMismatchError, RunStore

__all__ = [
    "ImageRef",
    "RunConfig",
    "ConfigMismatchError",
    "RunResult",
    "RunStore",
    "Shard",
    "ShardRunner",
    "Source",
    "SourceError",
    "explain_dataset",
    "plan_shards",
    "read_results",
    "resolve_source",
]
