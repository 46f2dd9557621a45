"""Checkpoint writes of ``fit_explainer`` remove the temporary files that killed writes left.

Before, each killed write left its own ``.tmp-<name>-<host>-<pid>-<random>`` file beside the
checkpoint, and nothing removed them: they piled up, one per kill.
"""

from __future__ import annotations

import os
import subprocess
import sys

from ctc_plugin.explainer.presets import ExplainerHyperparameters
from ctc_plugin.resumable import atomic

from .helpers import tiny_classifier, tiny_explainer, tuple_loader


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_checkpoint_write_removes_leftovers_of_killed_writers_only(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    killed = tmp_path / f".tmp-run.ckpt-{atomic._host()}-{_dead_pid()}-0badc0de"
    running = tmp_path / f".tmp-run.ckpt-{atomic._host()}-{os.getpid()}-5ca1ab1e"
    for leftover in (killed, running):
        leftover.write_bytes(b"partial")
    tiny_explainer().fit(
        tiny_classifier(seed=0),
        tuple_loader(),
        epochs=1,
        checkpoint=ckpt,
        config=ExplainerHyperparameters(lr=1e-2),
        show_progress=False,
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["run.ckpt", running.name])
