"""The scripts the docs name answer ``--help`` instead of running, and ``run_all.py --quick`` works.

Three docs scripts ignored ``--help`` and ran in full (two rewrote figures of the docs site);
two benchmark scripts refused the ``--quick`` that ``benchmarks/run_all.py`` passes on. Checked on
the source, so that no script has to run here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Scripts that hand their arguments on whole: to ``ctc-plugin benchmark`` and to every script.
PASS_THROUGH = {"bench_methods.py", "run_all.py"}
#: The scripts run as commands (a ``__main__`` block), but those that pass arguments on.
SCRIPTS = [
    path
    for path in sorted((ROOT / "docs" / "scripts").glob("*.py"))
    + sorted((ROOT / "benchmarks").glob("*.py"))
    if '__name__ == "__main__"' in path.read_text() and path.name not in PASS_THROUGH
]


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_a_script_parses_its_arguments(script: Path) -> None:
    source = script.read_text()
    assert "ArgumentParser(" in source and ".parse_args(" in source, (
        f"{script.name} runs without parsing its arguments: `--help` would run it"
    )


@pytest.mark.parametrize(
    "script",
    sorted((ROOT / "benchmarks").glob("bench_*.py")),
    ids=lambda p: p.name,
)
def test_every_benchmark_takes_the_quick_of_run_all(script: Path) -> None:
    source = script.read_text()
    assert '"--quick"' in source or script.name in PASS_THROUGH, (
        f"{script.name} refuses --quick, which benchmarks/run_all.py --quick passes on"
    )
