"""Synthetic images with exact ground truth: which pixels decide the class.

``ShapesDataset(split="shapes"|"composite", size=N, seed=S, image_size=96)`` is a seeded
``torch.utils.data.Dataset``; [`write_split`][ctc_plugin.datasets.write_split] stores a split on
disk as PNG files and masks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ctc_plugin.datasets.splits import SPLITS

#: Where each public name lives; imported on first use (``import ctc_plugin.datasets`` and
#: ``SPLITS`` need no torch).
_EXPORTS = {
    "TRAIN_SEED": "ctc_plugin.datasets.dataset",
    "ShapesDataset": "ctc_plugin.datasets.dataset",
    "sample_path": "ctc_plugin.datasets.export",
    "write_split": "ctc_plugin.datasets.export",
    "Scene": "ctc_plugin.datasets.scene",
    "SceneObject": "ctc_plugin.datasets.scene",
    "label_of": "ctc_plugin.datasets.scene",
    "render": "ctc_plugin.datasets.scene",
}

__all__ = [
    "SPLITS",
    "TRAIN_SEED",
    "Scene",
    "SceneObject",
    "ShapesDataset",
    "label_of",
    "render",
    "sample_path",
    "write_split",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ctc_plugin.datasets.dataset import TRAIN_SEED, ShapesDataset
    from ctc_plugin.datasets.export import sample_path, write_split
    from ctc_plugin.datasets.scene import Scene, SceneObject, label_of, render


#: Submodules, reachable as attributes as an eagerly imported package's would be.
_SUBMODULES = ("dataset", "export", "geometry", "scene", "splits")


def __getattr__(name: str) -> Any:
    """Import a public name (or a submodule) on first use."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ctc_plugin.datasets' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
