"""The `ShapesDataset`: seeded synthetic images with ground-truth evidence masks."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ctc_plugin.datasets.scene import Scene, check_split, render, sample_scene
from ctc_plugin.inputs import is_integer

_SPLIT_CODES = {"shapes": 1, "composite": 2}

#: The seed the shipped zoo models were trained on (for every split). Evaluate with any other.
TRAIN_SEED = 0
#: Seeds are 32-bit: NumPy's ``SeedSequence`` reads a larger one as two words and pads short
#: entropy with zeros, so ``[2**32, split, 0]`` would draw the item ``[0, split, 1]`` draws.
_SEED_LIMIT = 2**32


class ShapesDataset(Dataset):
    """Synthetic images whose class-deciding pixels are known exactly.

    Each image has a textured, low-saturation background, the object(s) that decide the class and
    one to three distractors (thin bars or ellipses, in any colour), each drawn with an exact mask.

    * ``split="shapes"``: six classes, the shape of the one evidence object
      (`classes` = circle, square, triangle, star, cross, ring).
    * ``split="composite"``: two classes decided by a spatial relation between two evidence
      objects, a hollow container (a hoop or a square frame) and a small filled shape:
      ``"inside"`` (the shape lies within the container's outline) or ``"outside"`` (beside it).
      Neither object alone decides the class; the evidence mask is the union of both.

    Item ``i`` depends only on ``(split, seed, i, image_size)``: the same arguments always give
    the same images, and different seeds give independent samples. The shipped zoo models were
    trained on ``seed=TRAIN_SEED`` (0); use any other seed for evaluation.

    Items are dicts with ``"image"`` ((3, H, W) float32 in [0, 1]), ``"label"`` (int),
    ``"evidence"`` ((H, W) bool) and ``"instances"`` ((H, W) int64, 0 = background, evidence
    objects first, then distractors). No transform is applied: a torchvision ``transforms.v2``
    transform given an item as it is moves the image only; wrap the image in
    ``tv_tensors.Image`` and the two masks in ``tv_tensors.Mask`` so that they move with it.

    Args:
        split: ``"shapes"`` or ``"composite"``.
        size: Number of images.
        seed: Seed of the sample, 0 to 2**32 - 1.
        image_size: Side of the square images in pixels (at least 32).

    Raises:
        ValueError: For an unknown split, a size, seed or image size that is not a whole number,
            a negative size or seed, a seed of 2**32 or more, or images under 32 pixels.
    """

    def __init__(
        self, split: str = "shapes", size: int = 1000, seed: int = 1, image_size: int = 96
    ) -> None:
        self.classes: list[str] = list(check_split(split))
        for name, value in (("size", size), ("seed", seed), ("image_size", image_size)):
            if not is_integer(value):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
        size, seed, image_size = int(size), int(seed), int(image_size)
        if size < 0 or seed < 0:
            raise ValueError(f"size and seed must be non-negative, got size={size}, seed={seed}")
        if seed >= _SEED_LIMIT:
            raise ValueError(
                f"seed must be below 2**32 (a larger one repeats the items of a smaller seed, "
                f"the zoo's training images among them), got {seed}"
            )
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
        self.split = split
        self.size = size
        self.seed = seed
        self.image_size = image_size

    @property
    def num_classes(self) -> int:
        """Number of classes of the split."""
        return len(self.classes)

    def __len__(self) -> int:
        return self.size

    def scene(self, index: int) -> tuple[Scene, int]:
        """Return the scene description and label of item ``index``.

        Raises:
            TypeError: When ``index`` is not a whole number (a slice or a list of indices, say).
            IndexError: When it is out of range.
        """
        index = _whole_index(index)
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of {self.size} images")
        index %= self.size
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])
        return sample_scene(rng, self.split, self.image_size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        """Render item ``index`` (an int, a NumPy integer or a 0-d torch integer tensor).

        Negative indices count from the end. Several items: ``torch.utils.data.Subset``.
        """
        scene, label = self.scene(index)
        image, evidence, instances = render(scene)
        return {
            "image": torch.from_numpy(image),
            "label": label,
            "evidence": torch.from_numpy(evidence),
            "instances": torch.from_numpy(instances),
        }

    def tensors(self, show_progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Render every image at once.

        Args:
            show_progress: Show a tqdm progress bar.

        Returns:
            ``(images, labels)``: an ``(N, 3, H, W)`` float32 tensor and an ``(N,)`` int64 tensor.
        """
        from tqdm.auto import tqdm

        images = torch.empty(self.size, 3, self.image_size, self.image_size)
        labels = torch.empty(self.size, dtype=torch.int64)
        for i in tqdm(range(self.size), desc=f"{self.split} images", disable=not show_progress):
            scene, labels[i] = self.scene(i)
            images[i] = torch.from_numpy(render(scene)[0])
        return images, labels


def _whole_index(index: object) -> int:
    """``index`` as an int: a Python or NumPy integer, or a 0-d integer tensor or array.

    Raises:
        TypeError: For anything else (a bool, a float, several indices), naming
            ``torch.utils.data.Subset`` for several items.
    """
    if isinstance(index, torch.Tensor | np.ndarray) and index.ndim == 0:
        index = index.item()  # a bool or float item is refused below
    if not is_integer(index):
        raise TypeError(
            f"index must be a whole number (an int, a NumPy integer or a 0-d integer tensor "
            f"or array), "
            f"got {index!r}; for several items use torch.utils.data.Subset(dataset, indices)"
        )
    return int(index)
