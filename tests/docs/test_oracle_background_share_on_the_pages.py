"""The background share the pages give for the benchmark's oracle features is the measured one.

"Choose a method" and "Benchmarks" explain `efficientnet`'s oracle results by the share of the
image its one background feature covers; the share they state must be the mean over the
benchmark's 200 held-out images that ``docs/scripts/oracle_scores.py --background`` prints.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "scripts" / "oracle_scores.py"
PAGES = ("choose-a-method.md", "benchmarks.md")


def background_shares(images: int):
    """``background_shares`` of the docs script, loaded from its file."""
    spec = importlib.util.spec_from_file_location("oracle_scores", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.background_shares(images)


def test_background_share_is_between_zero_and_one_per_image() -> None:
    """One share per image, each a fraction of its pixels."""
    shares = background_shares(3)
    assert shares.shape == (3,)
    assert ((shares > 0) & (shares < 1)).all()


@pytest.fixture(scope="module")
def mean_percent() -> int:
    """The background's mean share of the benchmark's 200 images, in whole percent."""
    return round(100 * float(background_shares(200).mean()))


@pytest.mark.parametrize("page", PAGES)
def test_pages_state_the_measured_background_share(page: str, mean_percent: int) -> None:
    """Every 'background feature ... N %' on the page is the mean over the 200 images."""
    mean = mean_percent
    text = " ".join((ROOT / "docs" / page).read_text(encoding="utf-8").split())
    stated = re.findall(r"background feature[^.]*?(\d+) ?%", text)
    assert stated, f"{page} no longer states the background feature's share"
    assert [int(value) for value in stated] == [mean] * len(stated), (page, stated, mean)
