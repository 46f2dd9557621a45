"""ImageNet-1k's class folders: WordNet IDs (``n01440764``), one per class, in class order.

ImageNet is distributed in class folders named by WordNet ID (``train/n01440764/...``), and
every ImageNet-1k classifier (torchvision, timm, Hugging Face) orders its 1000 classes as the
sorted IDs. A folder holding only some of them (Imagenette, a few classes of the validation
set) gives other indices when its folders are counted, so `imagenet_classes` maps the IDs
themselves. The list is ``imagenet_synsets.txt`` beside this module (the 1000 sorted IDs).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from ctc_plugin.wording import are, first_names

__all__ = ["IMAGENET_CLASSES", "imagenet_classes", "imagenet_synsets"]

#: The class count of ImageNet-1k classifiers.
IMAGENET_CLASSES = 1000

_SYNSETS_FILE = Path(__file__).with_name("imagenet_synsets.txt")


@functools.cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 WordNet IDs of ImageNet-1k, in the order of its classes."""
    return tuple(_SYNSETS_FILE.read_text(encoding="ascii").split())


@functools.cache
def _positions() -> dict[str, int]:
    """Each WordNet ID's ImageNet-1k class index."""
    return {synset: index for index, synset in enumerate(imagenet_synsets())}


def imagenet_classes(folders: Sequence[str], count: int) -> list[int] | None:
    """The ImageNet-1k class of each folder name, when those are ImageNet-1k's WordNet IDs.

    Args:
        folders: Class folder names.
        count: The model's class count.

    Returns:
        One class index per folder, for a model of 1000 classes whose folders are all
        ImageNet-1k WordNet IDs; ``None`` where none of them is one, or the model has another
        class count (the folders mean something else).

    Raises:
        ValueError: For a model of 1000 classes whose folders are partly ImageNet-1k WordNet
            IDs: the others (a stray folder, an ID of another ImageNet) are named.
    """
    if count != IMAGENET_CLASSES:
        return None
    positions = _positions()
    known = [folder for folder in folders if folder in positions]
    others = [folder for folder in folders if folder not in positions]
    if not known:
        return None
    if others:
        classes = "an ImageNet-1k class" if len(known) == 1 else "ImageNet-1k classes"
        raise ValueError(
            f"{are(len(known), 'class folder')} {classes} (WordNet IDs such as {known[0]}) but "
            f"{are(len(others))} not ({first_names(others)}): move "
            f"{'it' if len(others) == 1 else 'them'} out of the folder, or name every folder by "
            "its ImageNet-1k WordNet ID"
        )
    return [positions[folder] for folder in folders]
