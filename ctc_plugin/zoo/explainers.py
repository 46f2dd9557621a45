"""Explainers shipped with the zoo models, trained by ``ctc-plugin explainer train``.

Their files live beside the zoo weights and are named and checked against the sha256 manifest by
[`ctc_plugin.weights`][ctc_plugin.weights]; this module knows the kinds and loads them.
"""

from __future__ import annotations

from pathlib import Path

import ctc_plugin.weights as weights
from ctc_plugin.datasets.splits import check_split
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.zoo.loading import check_family, load

#: Kinds of shipped explainer: ``"default"`` (small U-Net, fast), ``"class-specific"``
#: (a copy of the classifier gives the class maps: masks of absent classes stay dark, several
#: times slower) and ``"distilled"`` (the ``"student-unet"`` backbone: class-specific through one
#: small network distilled from the classifier's class maps and the default explainer's masks,
#: at about the default's cost).
KINDS = ("default", "class-specific", "distilled")

#: How to build each kind (for the error when a file is missing).
BUILD_COMMANDS = {
    "default": "ctc-plugin explainer train --model {family} --split {split} --out PATH",
    "class-specific": "ctc-plugin explainer train --model {family} --split {split} "
    "--backbone classifier --out PATH",
    "distilled": "ctc-plugin explainer gate --model {family} --split {split} --gate student-unet "
    "--mask-offset 0.5 --out PATH",
}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown explainer kind {kind!r}; expected one of {KINDS}")


def explainer_path(family: str, split: str = "shapes", kind: str = "default") -> Path:
    """Return where the shipped explainer of a zoo model lives (whether or not it exists).

    Raises:
        ValueError: For an unknown family, split or kind.
    """
    _check_kind(kind)
    check_family(family)
    check_split(split)
    return weights.explainer_path(family, split, kind)


def shipped_explainers(kind: str = "default") -> list[tuple[str, str]]:
    """Return the ``(family, split)`` pairs that have a shipped explainer file of ``kind``."""
    _check_kind(kind)
    return [(family, split) for family, split, k in weights.explainer_files() if k == kind]


def load_explainer(family: str, split: str = "shapes", kind: str = "default") -> Explainer:
    """Load the shipped explainer of the zoo model ``family`` trained on ``split``.

    Args:
        family: One of [`FAMILIES`][ctc_plugin.zoo.FAMILIES].
        split: Data split the zoo model was trained on.
        kind: ``"default"`` (small U-Net, the fast one), ``"class-specific"`` (its class maps
            come from a copy of the classifier; the mask of a class absent from the image stays
            dark, at several times the cost) or ``"distilled"`` (class-specific through one
            small network distilled from the classifier's class maps and the default
            explainer's masks, at about the default's cost).

    Returns:
        The trained [`Explainer`][ctc_plugin.Explainer], in eval mode, with the
        training command and settings in its ``metadata``, and the zoo model it was trained
        against as its classifier (``trained_for``), so that pairing it with another
        classifier warns.

    Raises:
        FileNotFoundError: If no explainer is shipped for that model, naming the command that
            trains one.
        ValueError: For an unknown family, split or kind, or a file that differs from the
            weights manifest (damaged: the message gives both digests and says to reinstall).
    """
    path = explainer_path(family, split, kind)
    if not path.is_file():
        available = ", ".join(f"{f}/{s}" for f, s in shipped_explainers(kind)) or "none"
        loading = "Explainer.load(PATH" + (", classifier=model)" if holds_classifier(kind) else ")")
        raise FileNotFoundError(
            f"no shipped {kind} explainer for zoo model {family!r} on split {split!r} "
            f"(shipped: {available}); build one with "
            f"`{BUILD_COMMANDS[kind].format(family=family, split=split)}` "
            f"and load it with {loading}"
        )
    classifier = load(family, split) if holds_classifier(kind) else None
    explainer = Explainer.load(path, classifier=classifier)  # its own file is checked first
    if explainer.trained_for is None:  # shipped before explainers recorded their classifier
        explainer.record_classifier(classifier or load(family, split))  # trained against it
    return explainer


def holds_classifier(kind: str) -> bool:
    """Whether files of ``kind`` hold a copy of the classifier (loading needs its architecture)."""
    return kind == "class-specific"
