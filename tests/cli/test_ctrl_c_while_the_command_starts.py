"""A Ctrl-C while the command starts ends it with the same one line as later, no traceback.

A review found: Ctrl-C in about the first 0.3 s of ``ctc-plugin explain-dataset`` printed a
Python traceback (``KeyboardInterrupt`` in ``from ctc_plugin.cli import main``, the console
script's first line, while it imported every command module) where the rest of the run prints
``ctc-plugin explain-dataset: interrupted; run the same command again to resume``. The command
modules are now imported by ``main`` (building the parser), which ends a Ctrl-C there with
``ctc-plugin: interrupted`` and status 130; only Python's own start is left before it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: The console script ``ctc-plugin``, with a Ctrl-C (a KeyboardInterrupt) while the data-set
#: runs' engine module is imported.
_INTERRUPTED_WHILE_LOADING = """
import sys

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "ctc_plugin.runs.engine":
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, Interrupt())
from ctc_plugin.cli import main
sys.exit(main(["explain-dataset", "shapes", "--images", "2", "--methods", "ctc", "--out", "run"]))
"""


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_importing_the_command_line_loads_no_command_module(tmp_path):
    """The console script's import is all that runs before ``main``: it must stay short."""
    done = _python(
        "import sys, ctc_plugin.cli\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('ctc_plugin'))))",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split()
    assert loaded == ["ctc_plugin", "ctc_plugin.cli", "ctc_plugin.commands"], loaded


def test_ctrl_c_while_the_command_modules_load_is_one_line_and_status_130(tmp_path):
    done = _python(_INTERRUPTED_WHILE_LOADING, tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr == "ctc-plugin: interrupted\n", done.stderr
    assert done.returncode == 130
    assert not (tmp_path / "run").exists()  # nothing started
