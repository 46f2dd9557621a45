"""A run folder written before an option existed resumes: its manifest lacks the option's key.

The ``explainer`` option (and its file's sha256) joined the run configuration later; a folder
of a run started without them holds no such keys, and the same command on it is the same run.
"""

from __future__ import annotations

import json

from ctc_plugin.runs import explain_dataset


def test_a_manifest_without_the_explainer_keys_is_the_same_run(tmp_path):
    out = tmp_path / "run"
    options = {"images": 2, "segmenter": "grid", "segments": 4, "show_progress": False}
    first = explain_dataset("shapes", ["gradcam"], out, **options)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["config"].pop("explainer") is None
    assert manifest["config"].pop("explainer_sha256") is None
    manifest_path.write_text(json.dumps(manifest))  # as an older version wrote it
    again = explain_dataset("shapes", ["gradcam"], out, **options)
    assert again.computed == 0 and again.shards == first.shards
