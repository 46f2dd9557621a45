"""The zoo's families and training settings: plain data, importable without torch.

The command line reads them to build its options and ``--help`` (which must not wait for torch);
[`ctc_plugin.zoo.loading`][ctc_plugin.zoo.loading] and
[`ctc_plugin.zoo.training`][ctc_plugin.zoo.training] use them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The model families: the four the CTC paper evaluates, in its order, then a modern CNN and a
#: vision transformer.
FAMILIES: tuple[str, ...] = ("vgg", "resnet", "densenet", "inception", "efficientnet", "vit")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (the defaults reproduce the shipped weights).

    Attributes:
        size: Number of training images (drawn with ``seed=TRAIN_SEED``).
        epochs: Passes over the training images.
        batch_size: Images per step.
        lr: Peak learning rate of the one-cycle schedule (Adam).
        weight_decay: Adam weight decay.
        seed: Seed of the initialisation, the shuffling and the flips.
        image_size: Side of the training images.
    """

    size: int = 5000
    epochs: int = 4
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    image_size: int = 96


#: Families whose shipped files were trained with settings other than
#: [`TrainConfig`][ctc_plugin.zoo.TrainConfig]'s defaults (a transformer needs more passes over the
#: small training set than a CNN).
FAMILY_TRAINING: dict[str, dict[str, int | float]] = {"vit": {"epochs": 16, "lr": 2e-3}}

#: Torch CPU threads the shipped files were trained on: training is bitwise reproducible per
#: thread count, so another count gives other weights (``zoo train --threads``' default).
SHIPPED_THREADS: int = 1


def training_config(family: str, **overrides: float | None) -> TrainConfig:
    """Return the settings that reproduce ``family``'s shipped files, with ``overrides`` applied.

    Args:
        family: A zoo family.
        **overrides: [`TrainConfig`][ctc_plugin.zoo.TrainConfig] fields to replace; ``None`` values
            are ignored.
    """
    values = {**FAMILY_TRAINING.get(family, {})}
    values.update({name: value for name, value in overrides.items() if value is not None})
    return TrainConfig(**values)
