"""What the Explainer's training reads: loaders of batches, and each batch checked.

`check_loader` and `check_reiterable` refuse what is not a loader ``fit`` can read each epoch;
`checked_batch` splits a batch (a tuple or a dict, `split_batch`) into its images and labels,
checks both, and turns the labels into multi-hot targets (`multi_hot`), with messages that
name the loader and the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from ctc_plugin.explainer.network import Explainer
from ctc_plugin.explainer.presets import ExplainerHyperparameters
from ctc_plugin.inputs import check_images, floating_dtype
from ctc_plugin.wording import counted


def split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """Return ``(images, labels)`` from a dict batch (``"image"``, ``"label"``) or a tuple.

    Raises:
        ValueError: If the batch has neither form.
    """
    if isinstance(batch, Mapping):
        if "image" not in batch or "label" not in batch:
            raise ValueError(
                f"dict batches need 'image' and 'label' entries, got keys {sorted(batch)}"
            )
        return batch["image"], batch["label"]
    if isinstance(batch, list | tuple) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        "batches must be dicts with 'image' and 'label' (like ShapesDataset items) or "
        f"(image, label) tuples, got {type(batch).__name__}"
    )


def multi_hot(labels: Tensor, num_classes: int) -> tuple[Tensor, bool]:
    """Return multi-hot float targets ``(N, C)`` and whether the labels were multi-label.

    Args:
        labels: Class indices ``(N,)`` (single-label) or multi-hot ``(N, C)`` (multi-label).
        num_classes: ``C``.

    Raises:
        ValueError: For labels out of range or of the wrong shape.
    """
    if labels.dim() == 1 and not labels.is_floating_point():
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"labels must be class indices in [0, {num_classes}), got values "
                f"from {int(labels.min())} to {int(labels.max())}"
            )
        return torch.nn.functional.one_hot(labels.long(), num_classes).float(), False
    if labels.dim() == 2 and labels.shape[1] == num_classes:
        targets = labels.float()
        if not ((targets == 0) | (targets == 1)).all():
            raise ValueError("multi-label targets must be 0/1 (multi-hot)")
        return targets, True
    hint = ""
    if labels.dim() == 1 and labels.is_floating_point():
        hint = "; class indices must be integers: labels.long()"
    elif labels.dim() == 2 and labels.shape[1] == 1:
        hint = "; for one class index per example, drop the last dimension: labels.squeeze(1)"
    raise ValueError(
        f"labels must be class indices (N,) or multi-hot (N, {num_classes}), "
        f"got shape {tuple(labels.shape)} ({labels.dtype}){hint}"
    )


def _targets(labels: Any, num_classes: int, multilabel: bool | None) -> tuple[Tensor, bool]:
    """Return multi-hot targets and whether the classification loss treats them as multi-label.

    ``multilabel=None`` follows the labels (class indices: single-label, multi-hot:
    multi-label); ``True`` uses binary cross-entropy on class indices too (as one-hot targets);
    ``False`` uses cross-entropy on multi-hot labels that hold exactly one class per image.

    Raises:
        ValueError: For invalid labels, a multi-hot label without a class, or
            ``multilabel=False`` with an image of several classes.
    """
    targets, is_multi = multi_hot(torch.as_tensor(labels), num_classes)
    empty = (targets.sum(dim=1) == 0).nonzero()
    if len(empty):
        raise ValueError(
            f"example {int(empty[0])} has no class in its multi-hot label ({len(empty)} of "
            f"{len(targets)} in the batch): the explainer masks the classes an image holds, "
            "so every image needs at least one; leave such images out of the loader"
        )
    if multilabel is None:
        return targets, is_multi
    if not multilabel and is_multi:
        counts = targets.sum(dim=1)
        if not bool((counts == 1).all()):
            example = int((counts != 1).nonzero()[0])
            raise ValueError(
                f"multilabel=False (cross-entropy) needs one class per image, but example "
                f"{example} has {int(counts[example])} classes in its multi-hot label; use "
                "multilabel=True or None for multi-label data"
            )
    return targets, bool(multilabel)


def batch_on_device(
    batch: Any, explainer: Explainer, multilabel: bool | None, where: str
) -> tuple[Tensor, Tensor, bool]:
    """Split a batch and return ``(images, targets, multilabel)`` on the explainer's device.

    The images come in the explainer's dtype (float32 unless it was converted).

    Raises:
        ValueError: For images that are not a finite floating-point batch of the explainer's
            channels (``where`` names the loader), or invalid labels.
    """
    images, targets, is_multi = checked_batch(
        batch, explainer.num_classes, multilabel, explainer.in_channels, where
    )
    device = next(explainer.parameters()).device
    dtype = floating_dtype(explainer) or torch.float32
    return images.to(device=device, dtype=dtype), targets.to(device), is_multi


def checked_batch(
    batch: Any, num_classes: int, multilabel: bool | None, channels: int, where: str
) -> tuple[Tensor, Tensor, bool]:
    """Split ``batch``; return its checked images, multi-hot targets and whether multi-label.

    Raises:
        ValueError: For images that are not a finite floating-point batch of ``channels``
            channels, or invalid labels; the message names ``where`` (the loader and batch).
    """
    images, labels = split_batch(batch)
    given = images.shape[1] if isinstance(images, Tensor) and images.dim() == 4 else None
    if given in (1, 3) and given != channels:  # gray for an RGB explainer, or the reverse
        raise ValueError(
            f"the images of {where} have {counted(given, 'channel')}, the explainer takes "
            f"{channels}: "
            f"build it for the images the classifier takes (build_backbone(..., "
            f"in_channels={given}))"
        )
    images = check_images(images, name=f"the images of {where}", channels=channels)
    try:
        targets, is_multi = _targets(labels, num_classes, multilabel)
    except ValueError as error:
        raise ValueError(f"the labels of {where}: {error}") from error
    if len(targets) != len(images):
        raise ValueError(
            f"{where} holds {counted(len(images), 'image')} and "
            f"{counted(len(targets), 'label')}: give one label (or one multi-hot row) per image"
        )
    return images, targets, is_multi


def check_loader(loader: Any, name: str) -> None:
    """Refuse what is not an iterable of batches, saying what to pass instead.

    Raises:
        TypeError: For hyper-parameters given in the loader's place, a map-style dataset of
            single examples (not batches), or one ``(images, labels)`` batch given as the
            loader.
    """
    if isinstance(loader, ExplainerHyperparameters):
        raise TypeError(
            f"{name} got an ExplainerHyperparameters; pass the hyper-parameters as config=... "
            "(fit(classifier, train_loader, val_loader, config=...))"
        )
    if isinstance(loader, torch.utils.data.Dataset) and not isinstance(
        loader, torch.utils.data.IterableDataset
    ):  # a map-style dataset holds examples; an iterable one may stream whole batches
        raise TypeError(
            f"{name} is a dataset ({type(loader).__name__}) of single examples; fit reads "
            "batches: pass torch.utils.data.DataLoader(dataset, batch_size=..., shuffle=True)"
        )
    if isinstance(loader, list | tuple) and loader and isinstance(loader[0], Tensor):
        raise TypeError(
            f"{name} holds tensors, not batches: to train on one batch (images, labels), "
            "pass a list of batches, [(images, labels)]"
        )
    if not isinstance(loader, Iterable):
        raise TypeError(
            f"{name} must be an iterable of batches (a DataLoader, a list of (images, labels) "
            f"tuples or of dicts), got {type(loader).__name__}"
        )


def check_reiterable(loader: Iterable[Any], name: str, passes: int) -> None:
    """Refuse a one-shot iterator (a generator) that fit would have to read ``passes`` times.

    Its second pass would find it used up: an empty epoch, reported after the first epoch has
    already trained the explainer.
    """
    if passes > 1 and isinstance(loader, Iterator):  # not iter(loader): it starts workers
        raise ValueError(
            f"{name} is a one-shot iterator ({type(loader).__name__}): fit reads it {passes} "
            "times (once per epoch, a validation loader once more before training), and it is "
            "used up after the first; pass a DataLoader or a list of batches"
        )
