"""A resume equals an uninterrupted run for data sets that draw with NumPy or ``random``.

Checkpoints held torch's generator alone: a data set that augments with ``numpy.random`` or
``random`` in the main process (the albumentations style) saw other draws after a resume, and
the weights differed. A loader with persistent workers, whose seeds are drawn once, is refused.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from .helpers import FAST, data, tiny_classifier, tiny_explainer


class HostDraws(Dataset):
    """Images flipped by ``random`` and jittered by ``numpy.random``."""

    def __init__(self) -> None:
        self.images, self.labels = data(12)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        noise = torch.from_numpy(np.random.uniform(0, 0.05, self.images[i].shape))
        image = (self.images[i] + noise.float()).clamp(0, 1)
        return (image.flip(-1) if random.random() < 0.5 else image), self.labels[i]


def _fit(epochs: int, checkpoint=None, resume=None, seed: int = 0):
    random.seed(0)  # a fresh process, seeded as a user seeds it
    np.random.seed(0)
    explainer = tiny_explainer(seed=seed)
    explainer.fit(
        tiny_classifier(), DataLoader(HostDraws(), batch_size=4, shuffle=True), epochs=epochs,
        seed=1, patience=5, checkpoint=checkpoint, resume=resume, **FAST,
    )  # fmt: skip
    return explainer


def test_a_resume_equals_an_uninterrupted_run(tmp_path):
    full = _fit(3)
    _fit(1, checkpoint=tmp_path / "run.ckpt")
    resumed = _fit(3, checkpoint=tmp_path / "run.ckpt", resume=tmp_path / "run.ckpt", seed=9)
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_persistent_workers_are_refused_with_a_checkpoint(tmp_path):
    loader = DataLoader(HostDraws(), batch_size=4, num_workers=1, persistent_workers=True)
    with pytest.raises(ValueError, match="persistent_workers=False"):
        tiny_explainer().fit(
            tiny_classifier(), loader, epochs=1, checkpoint=tmp_path / "c.ckpt", **FAST
        )
