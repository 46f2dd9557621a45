"""``ctc-plugin benchmark`` on a full disk: one line saying what is kept and how to resume.

The resumable commands (``benchmark``, ``explain-dataset``) keep every finished piece when a
write fails; the message says so (``cli.main``, for every command marked ``resumable``).
"""

from __future__ import annotations

import errno

from ctc_plugin.cli import main
from ctc_plugin.harness import benchmark


def test_a_full_disk_says_the_finished_pieces_are_kept(tmp_path, capsys, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "piece"))

    monkeypatch.setattr(benchmark, "run_benchmark", full_disk)
    status = main(["benchmark", "--out", str(tmp_path / "bench"), "--no-progress"])
    error = capsys.readouterr().err.strip()
    assert status == 2 and len(error.splitlines()) == 1, error
    assert "No space left on device" in error and "free some disk space" in error
    assert "what was finished so far is kept: run the same command again to resume" in error
