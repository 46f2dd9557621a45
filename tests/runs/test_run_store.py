"""The run folder of the resumable engine: manifests compared as JSON reads them back."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ctc_plugin.resumable import ConfigMismatchError, RunStore, json_values


@dataclass(frozen=True)
class Options:
    methods: tuple[str, ...] = ("ctc", "gradcam")
    seed: int = 1


@pytest.mark.parametrize(
    "config",
    [
        {"methods": ("ctc", "gradcam"), "seed": 1},
        json_values(Options()),
        {"nested": [(1, 2)], "seed": 1},
    ],
)
def test_a_manifest_with_tuples_resumes_its_own_run(tmp_path, config):
    first = RunStore(tmp_path / "run")
    first.open({"job": "test", "config": config})
    RunStore(tmp_path / "run").open({"job": "test", "config": config})  # the same: resumes
    assert first.manifest()["config"] == json_values(config)
    with pytest.raises(ConfigMismatchError, match="seed: 1 there, 2 now"):
        RunStore(tmp_path / "run").open({"job": "test", "config": {**config, "seed": 2}})


def test_json_values_of_a_dataclass_is_its_fields_as_json():
    assert json_values(Options()) == {"methods": ["ctc", "gradcam"], "seed": 1}
