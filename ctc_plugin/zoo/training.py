"""Training the zoo models on the synthetic data sets, reproducibly from a seed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin.datasets import TRAIN_SEED, ShapesDataset
from ctc_plugin.datasets.scene import check_split
from ctc_plugin.inputs import device_of
from ctc_plugin.module_state import modes_kept
from ctc_plugin.zoo.settings import FAMILY_TRAINING as FAMILY_TRAINING
from ctc_plugin.zoo.settings import TrainConfig, training_config


def train_family(
    family: str,
    split: str = "shapes",
    config: TrainConfig | None = None,
    show_progress: bool = True,
) -> nn.Module:
    """Build ``family`` with its initialisation seeded by ``config.seed``, then `train` it.

    This is how every shipped weight file was made (``ctc-plugin zoo train`` calls it).

    Args:
        family: One of [`FAMILIES`][ctc_plugin.zoo.FAMILIES].
        split: ``"shapes"`` or ``"composite"``.
        config: Training settings; ``None`` takes
            [`training_config`][ctc_plugin.zoo.training_config] (``family``'s shipped settings).
        show_progress: Show tqdm progress bars.

    Returns:
        The trained model, in eval mode.
    """
    from ctc_plugin.zoo.loading import build

    config = config or training_config(family)
    torch.manual_seed(config.seed)
    model = build(family, len(check_split(split)))
    return train(model, split, config, show_progress)


def train(
    model: nn.Module,
    split: str = "shapes",
    config: TrainConfig | None = None,
    show_progress: bool = True,
) -> nn.Module:
    """Train ``model`` on ``split`` and return it in eval mode.

    The shuffling and flips are seeded by ``config.seed``; the initialisation is the caller's
    ([`train_family`][ctc_plugin.zoo.train_family] seeds it too). With the same config, initial
    weights, torch version and thread count, the result is the same bit for bit. The images are
    made on the CPU; each batch goes to the device of the model's first parameter, so a model
    moved to a GPU trains there.

    Args:
        model: An untrained model from [`ctc_plugin.zoo.build`][ctc_plugin.zoo.build].
        split: ``"shapes"`` or ``"composite"``.
        config: Training settings; the defaults reproduce the shipped files.
        show_progress: Show tqdm progress bars (data generation and training steps).

    Returns:
        The trained model (the same object), in eval mode.
    """
    from tqdm.auto import tqdm

    config = config or TrainConfig()
    if min(config.size, config.epochs, config.batch_size) < 1:
        raise ValueError(
            f"size, epochs and batch_size must be positive, got {config.size}, "
            f"{config.epochs}, {config.batch_size}"
        )
    data = ShapesDataset(split, size=config.size, seed=TRAIN_SEED, image_size=config.image_size)
    images, labels = data.tensors(show_progress=show_progress)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = -(-config.size // config.batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )
    device = device_of(model)
    model.train()
    progress = tqdm(
        total=config.epochs * steps_per_epoch, desc=f"training {split}", disable=not show_progress
    )
    for _ in range(config.epochs):
        order = torch.randperm(config.size, generator=generator)
        for start in range(0, config.size, config.batch_size):
            batch = order[start : start + config.batch_size]
            x = images[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            x[flip] = x[flip].flip(-1)  # mirror images keep their label in both splits
            logits = model(x.to(device))
            loss = F.cross_entropy(logits, labels[batch].to(logits.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            progress.update()
            progress.set_postfix(loss=f"{loss.item():.3f}")
    progress.close()
    return model.eval()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: str = "shapes",
    size: int = 500,
    seed: int = 1,
    batch_size: int = 100,
    show_progress: bool = False,
) -> float:
    """Return the accuracy of ``model`` on a fresh sample of ``split``.

    The images are made on the CPU; each batch goes to the device of the model's first
    parameter, so a model on a GPU is evaluated there.

    Args:
        model: A classifier taking data-set images and returning logits.
        split: ``"shapes"`` or ``"composite"``.
        size: Number of test images.
        seed: Seed of the test sample; must differ from the training seed.
        batch_size: Images per forward pass.
        show_progress: Show a tqdm progress bar of the images drawn (one batch at a time, so
            a large sample does not have to fit in memory at once).

    Returns:
        The fraction of images whose arg-max is their label.

    Raises:
        ValueError: If ``seed`` is the zoo's training seed, ``size`` or ``batch_size`` is not
            positive, or the model returns another number of class scores than ``split`` has
            classes (a model trained on the other split).
    """
    if size < 1 or batch_size < 1:
        raise ValueError(
            f"size and batch_size must be positive, got size={size}, batch_size={batch_size}"
        )
    if seed == TRAIN_SEED:
        raise ValueError(f"seed {TRAIN_SEED} is the training sample; evaluate with another seed")
    from tqdm.auto import tqdm

    data = ShapesDataset(split, size=size, seed=seed)
    device = device_of(model)
    correct = 0
    progress = tqdm(total=size, desc=f"{split} images", disable=not show_progress)
    with modes_kept(model):  # every module's flag back (BatchNorms frozen in a training model)
        model.eval()
        for i in range(0, size, batch_size):  # one batch drawn at a time, not the whole sample
            items = [data[j] for j in range(i, min(i + batch_size, size))]
            images = torch.stack([item["image"] for item in items])
            labels = torch.tensor([item["label"] for item in items])
            progress.update(len(items))
            logits = model(images.to(device))
            if logits.dim() != 2 or logits.shape[1] != data.num_classes:
                raise ValueError(
                    f"the model returns {logits.shape[1] if logits.dim() == 2 else 'no'} class "
                    f"scores per image (output {tuple(logits.shape)}), but split {split!r} has "
                    f"{data.num_classes} classes; evaluate a model trained on {split!r}"
                )
            correct += int((logits.argmax(1).cpu() == labels).sum())
    progress.close()
    return correct / size
