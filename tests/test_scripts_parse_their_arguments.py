"""The scripts the docs name answer ``--help`` instead of running, and ``run_all.py --quick`` works.

Three docs scripts ignored ``--help`` and ran in full (two rewrote figures of the docs site);
two benchmark scripts refused the ``--quick`` that ``benchmarks/run_all.py`` passes on. Checked on
the source, so that no script has to run here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Scripts that hand their arguments on whole (to ``ctc-plugin benchmark``).
PASS_THROUGH = {"bench_methods.py"}
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
    parses = ".parse_args(" in source or "parse_with_quick(" in source
    assert "ArgumentParser(" in source and parses, (
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


@pytest.mark.parametrize(
    "script",
    sorted((ROOT / "benchmarks").glob("bench_*.py")),
    ids=lambda p: p.name,
)
def test_quick_leaves_the_flags_given_as_they_are(script: Path) -> None:
    """Four scripts set their quick values over the parsed flags (``bench_ctc.py --quick --size
    64`` ran at 112 pixels); ``parse_with_quick`` makes them defaults."""
    import re

    source = script.read_text()
    assert not re.search(r"if args\.quick:\n\s+args\.\w+", source), (
        f"{script.name} overwrites the flags given with its quick values"
    )


def test_parse_with_quick_sets_defaults_only(monkeypatch) -> None:
    import argparse
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from quick_defaults import parse_with_quick

    for argv, expected in (
        ([], (224, 5)),
        (["--quick"], (112, 3)),
        (["--quick", "--size", "64"], (64, 3)),
        (["--size", "64"], (64, 5)),
    ):
        monkeypatch.setattr(sys, "argv", ["script", *argv])
        parser = argparse.ArgumentParser()
        parser.add_argument("--quick", action="store_true")
        parser.add_argument("--size", type=int, default=224)
        parser.add_argument("--repeats", type=int, default=5)
        args = parse_with_quick(parser, size=112, repeats=3)
        assert (args.size, args.repeats) == expected, argv
