"""Explainers shipped with the zoo models, trained by ``ctc-plugin explainer train``."""

from __future__ import annotations

from pathlib import Path

from ctc_plugin.explainer.network import Explainer

#: Folder holding the zoo weights and the shipped explainers.
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "zoo" / "weights"


def explainer_path(family: str, split: str = "shapes") -> Path:
    """Return where the shipped explainer of a zoo model lives (whether or not it exists)."""
    return WEIGHTS_DIR / f"explainer-{family}-{split}.pt"


def shipped_explainers() -> list[tuple[str, str]]:
    """Return the ``(family, split)`` pairs that have a shipped explainer file."""
    pairs = []
    for path in sorted(WEIGHTS_DIR.glob("explainer-*-*.pt")):
        family, split = path.stem.removeprefix("explainer-").rsplit("-", 1)
        pairs.append((family, split))
    return pairs


def load_explainer(family: str, split: str = "shapes") -> Explainer:
    """Load the shipped explainer of the zoo model ``family`` trained on ``split``.

    Args:
        family: Zoo family (``"vgg"``, ``"resnet"``, ``"densenet"``, ``"inception"``).
        split: Data split the zoo model was trained on.

    Returns:
        The trained :class:`~ctc_plugin.explainer.network.Explainer`, in eval mode, with the
        training command and settings in its ``metadata``.

    Raises:
        FileNotFoundError: If no explainer is shipped for that model, naming the command that
            trains one.
    """
    path = explainer_path(family, split)
    if not path.is_file():
        available = ", ".join(f"{f}/{s}" for f, s in shipped_explainers()) or "none"
        raise FileNotFoundError(
            f"no shipped explainer for zoo model {family!r} on split {split!r} "
            f"(shipped: {available}); train one with "
            f"`ctc-plugin explainer train --model {family} --split {split} --out PATH` "
            "and load it with Explainer.load(PATH)"
        )
    return Explainer.load(path)
