"""Class specificity of explainer masks on images holding objects of two classes.

Stalder et al. show that masking an image with the mask of class ``k`` keeps the classifier's
probability of ``k`` and removes the other classes' (their class-specific table). This module
builds two-object images from [`ShapesDataset`][ctc_plugin.datasets.ShapesDataset] and measures that
table for any classifier and explainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctc_plugin.explainer.losses import apply_mask
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.explainer.training import frozen


def two_object_images(dataset: object, count: int, gap: int = 3) -> tuple[Tensor, Tensor]:
    """Paste the evidence object of one image into another image of a different class.

    Pairs ``(i, j)`` of consecutive dataset items with different labels are combined when
    ``j``'s evidence object does not come within ``gap`` pixels of ``i``'s: the result shows
    both objects (``i``'s background and distractors).

    Args:
        dataset: A [`ShapesDataset`][ctc_plugin.datasets.ShapesDataset] (``split="shapes"``).
        count: Number of two-object images wanted.
        gap: Smallest distance in pixels between the two objects.

    Returns:
        ``(images, labels)``: ``(count, 3, H, W)`` images and ``(count, 2)`` class pairs.

    Raises:
        ValueError: If the dataset holds too few combinable pairs.
    """
    images, labels = [], []
    size = len(dataset)  # type: ignore[arg-type]
    for i in range(0, size - 1, 2):
        a, b = dataset[i], dataset[i + 1]  # type: ignore[index]
        if a["label"] == b["label"]:
            continue
        near = F.max_pool2d(a["evidence"][None, None].float(), 2 * gap + 1, 1, gap)[0, 0] > 0
        if (near & b["evidence"]).any():
            continue
        images.append(torch.where(b["evidence"], b["image"], a["image"]))
        labels.append((a["label"], b["label"]))
        if len(images) == count:
            return torch.stack(images), torch.tensor(labels)
    raise ValueError(f"found only {len(images)} two-object images in {size} items; use more items")


def two_object_training_data(count: int, seed: int, image_size: int = 96) -> tuple[Tensor, Tensor]:
    """Two-object ``"shapes"`` images with multi-hot labels, for multi-label training.

    Built by [`two_object_images`][ctc_plugin.explainer.specificity.two_object_images] from
    ``ShapesDataset("shapes", seed=seed)``.

    Args:
        count: Number of images.
        seed: Seed of the single-object images they are composed from.
        image_size: Side of the images in pixels.

    Returns:
        ``(images, labels)``: ``(count, 3, H, W)`` images and ``(count, 6)`` multi-hot float
        labels with the two present classes set.

    Raises:
        ValueError: If ``count`` is not positive.
    """
    from ctc_plugin.datasets import ShapesDataset

    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    # about one consecutive pair in three combines: eight items per image is ample
    source = ShapesDataset("shapes", size=8 * count + 16, seed=seed, image_size=image_size)
    images, pairs = two_object_images(source, count)
    labels = torch.zeros(count, source.num_classes).scatter_(1, pairs, 1.0)
    return images, labels


@dataclass
class SpecificityTable:
    """Mean class probabilities (in %) on two-object images, per class.

    Attributes:
        classes: Class names (rows).
        unmasked: Probability of the class on the unmasked images that hold it.
        own_mask: Probability of the class when the image is masked with that class's mask.
        other_mask: Probability of the class when masked with the other present class's mask.
        counts: Number of images holding each class.
    """

    classes: list[str]
    unmasked: Tensor
    own_mask: Tensor
    other_mask: Tensor
    counts: Tensor

    def markdown(self) -> str:
        """Return the table as Markdown, one column per class (as the published table)."""
        header = "| | " + " | ".join(self.classes) + " |"
        rule = "|---" * (len(self.classes) + 1) + "|"
        rows = [
            ("Unmasked", self.unmasked),
            ("Masked with the class's own mask", self.own_mask),
            ("Masked with the other object's mask", self.other_mask),
        ]
        body = [
            f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |" for name, values in rows
        ]
        return "\n".join([header, rule, *body])


@torch.no_grad()
def specificity_table(
    classifier: nn.Module,
    explainer: Explainer,
    images: Tensor,
    pairs: Tensor,
    classes: list[str],
    baseline: float = 0.5,
) -> SpecificityTable:
    """Measure the class-specific table on two-object images.

    Args:
        classifier: The explained model (single-label: probabilities are its softmax).
        explainer: Its trained explainer.
        images: ``(N, 3, H, W)`` two-object images.
        pairs: ``(N, 2)`` the two classes present in each image.
        classes: Class names.
        baseline: Value the masked-out pixels take (as in training).

    Returns:
        The table; classes that never occur get NaN. Both models keep their modes.
    """
    with frozen(classifier), frozen(explainer):
        masks = explainer(images).sigmoid()
        unmasked = classifier(images).softmax(dim=1)
        device = unmasked.device  # the accumulators where the probabilities are (a GPU)
        rows, pairs = torch.arange(len(images), device=device), pairs.to(device)
        num = len(classes)
        sums = {k: torch.zeros(num, device=device) for k in ("unmasked", "own", "other")}
        counts = torch.zeros(num, device=device)
        for side in (0, 1):
            k, other = pairs[:, side], pairs[:, 1 - side]
            own_probs = classifier(apply_mask(images, masks[rows, k], baseline)).softmax(dim=1)
            other_probs = classifier(apply_mask(images, masks[rows, other], baseline)).softmax(
                dim=1
            )
            sums["unmasked"].index_add_(0, k, unmasked[rows, k])
            sums["own"].index_add_(0, k, own_probs[rows, k])
            sums["other"].index_add_(0, k, other_probs[rows, k])
            counts.index_add_(0, k, torch.ones(len(k), device=device))
    scale = 100.0 / counts
    return SpecificityTable(  # a table to read: on the CPU, wherever the models ran
        classes=list(classes),
        unmasked=(sums["unmasked"] * scale).cpu(),
        own_mask=(sums["own"] * scale).cpu(),
        other_mask=(sums["other"] * scale).cpu(),
        counts=counts.long().cpu(),
    )
