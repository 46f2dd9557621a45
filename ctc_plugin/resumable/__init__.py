"""Resumable runs: one engine for every job that is cut into shards.

A job ([`Job`][ctc_plugin.resumable.job.Job]) plans shards and computes one shard at a time;
[`run_job`][ctc_plugin.resumable.job.run_job] skips the finished shards, runs the others in this
process or on Ray ([`cluster`][ctc_plugin.resumable.cluster]) and stores each one atomically in
the run folder ([`RunStore`][ctc_plugin.resumable.store.RunStore]), next to a manifest that a
resumed run must match ([`ConfigMismatchError`][ctc_plugin.resumable.atomic.ConfigMismatchError]
otherwise). ``ctc-plugin explain-dataset`` and ``ctc-plugin benchmark`` are two such jobs.

The package imports nothing else of ``ctc_plugin``; pyarrow, tqdm and Ray are imported when a
run starts.
"""

from __future__ import annotations

from ctc_plugin.resumable.atomic import ConfigMismatchError, write_atomic
from ctc_plugin.resumable.cluster import (
    RayConnectionError,
    RayError,
    RayUnavailableError,
    ShardQueue,
    run_on_ray,
)
from ctc_plugin.resumable.job import Job, JobResult, Runner, Shard, ShardInputError, run_job
from ctc_plugin.resumable.store import RunStore, json_values, read_json

__all__ = [
    "ConfigMismatchError",
    "Job",
    "JobResult",
    "RayConnectionError",
    "RayError",
    "RayUnavailableError",
    "RunStore",
    "Runner",
    "Shard",
    "ShardInputError",
    "ShardQueue",
    "json_values",
    "read_json",
    "run_job",
    "run_on_ray",
    "write_atomic",
]
