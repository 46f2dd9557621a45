"""``ctc-plugin zoo train`` removes the temporary files that killed saves left beside its file.

Before, each killed save left its own ``.tmp-<name>-<host>-<pid>-<random>`` file in the
weights folder, and nothing removed them.
"""

from __future__ import annotations

import os
import subprocess
import sys

from ctc_plugin import zoo
from ctc_plugin.cli import main
from ctc_plugin.resumable import atomic
from ctc_plugin.zoo import training


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_zoo_train_removes_leftovers_of_killed_saves_only(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "train_family", lambda family, *_, **__: zoo.build(family, 6))
    monkeypatch.setattr(training, "evaluate", lambda *args, **kwargs: 1.0)
    killed = tmp_path / f".tmp-vgg-shapes.pt-{atomic._host()}-{_dead_pid()}-0badc0de"
    running = tmp_path / f".tmp-vgg-shapes.pt-{atomic._host()}-{os.getpid()}-5ca1ab1e"
    for leftover in (killed, running):
        leftover.write_bytes(b"partial")
    assert main(["zoo", "train", "vgg", "--out", str(tmp_path)]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["vgg-shapes.pt", running.name]
    )
