"""Kill a command with SIGKILL once it has written something: the resume tests' one helper."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def kill_when(command: list[str], written: Callable[[], bool], what: str) -> None:
    """Start ``command`` (from the repository root) and SIGKILL it as soon as ``written()``.

    Fails when the command ends before that, or when nothing is written within 120 s; ``what``
    names what is awaited in those messages.
    """
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not written():
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, f"no {what} was written in 120 s"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
