"""The data splits and their class names: plain data, importable without NumPy or torch.

The command line reads them to build its options and ``--help``; the rest of
[`ctc_plugin.datasets`][ctc_plugin.datasets] uses them from here.
"""

from __future__ import annotations

#: Shapes that can decide a class (the classes of the ``"shapes"`` split, in label order).
CLASS_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")

#: Class names of each split, in label order.
SPLITS: dict[str, tuple[str, ...]] = {
    "shapes": CLASS_SHAPES,
    "composite": ("inside", "outside"),
}


def check_split(split: str) -> tuple[str, ...]:
    """Return the class names of ``split``; raise ValueError naming the valid splits otherwise."""
    if not isinstance(split, str) or split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    return SPLITS[split]
