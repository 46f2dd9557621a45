"""The shipped models decide by the ground-truth evidence, not by a shortcut around it.

The evidence masks are the zoo's ground truth for scoring explanations, so the models must use
what they mark: painted over with the scene's own background, the evidence takes the models'
balanced accuracy (the mean of the classes' accuracies) to chance; with the distractors left
out and another background (everything but the evidence changed) they keep their accuracy. On
``composite`` an "inside" needs both objects: either one painted over turns it to "outside".
What the guide states of the default class ("outside" without any evidence) is checked too.
The images: ``docs/scripts/evidence_dependence.py``, which prints the guide's table.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ctc_plugin import zoo
from ctc_plugin.datasets import SPLITS

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "scripts" / "evidence_dependence.py"
IMAGES = 24


def _script():
    spec = importlib.util.spec_from_file_location("evidence_dependence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def script():
    return _script()


@pytest.fixture(scope="module")
def samples(script):
    """Each split's images as drawn and changed, with their labels (seed 3, a fresh sample)."""
    return {split: script.variants(split, IMAGES, seed=3) for split in SPLITS}


#: One family in the default suite; every family with ``make test-slow``.
FAMILIES = [
    family if family == "resnet" else pytest.param(family, marks=pytest.mark.slow)
    for family in zoo.FAMILIES
]


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("family", FAMILIES)
def test_accuracy_goes_with_the_evidence(script, samples, family, split):
    images, labels = samples[split]
    result = script.measure(family, split, images, labels)
    chance = 1 / len(SPLITS[split])
    assert result["as drawn"]["accuracy"] >= 0.9
    assert result["no distractors, new background"]["accuracy"] >= 0.9, (
        f"{family}-{split} loses its accuracy when only what lies outside the evidence changes"
    )
    assert result["no evidence"]["balanced"] <= chance + 0.15, (
        f"{family}-{split} still classifies with the evidence painted over: a shortcut"
    )
    if split == "composite":
        for part in script.PARTS:  # an "inside" needs both objects
            assert result[part]["margin"][0] < 0, (family, part, result[part])
        # the guide's caveat: without any evidence the models answer "outside"
        assert result["no evidence"]["margin"][1] > 0, (family, result["no evidence"])
