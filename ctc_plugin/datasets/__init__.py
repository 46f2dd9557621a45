"""Synthetic images with exact ground truth: which pixels decide the class.

``ShapesDataset(split="shapes"|"composite", size=N, seed=S, image_size=96)`` is a seeded
``torch.utils.data.Dataset``; [`write_split`][ctc_plugin.datasets.write_split] stores a split on
disk as PNG files and masks.
"""

from ctc_plugin.datasets.dataset import TRAIN_SEED, ShapesDataset
from ctc_plugin.datasets.export import sample_path, write_split
from ctc_plugin.datasets.scene import Scene, SceneObject, label_of, render

__all__ = [
    "TRAIN_SEED",
    "Scene",
    "SceneObject",
    "ShapesDataset",
    "label_of",
    "render",
    "sample_path",
    "write_split",
]
