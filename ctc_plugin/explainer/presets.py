"""Published hyper-parameters of the Explainer objective, by name.

The values come from the authors' configuration files (Stalder et al., NeurIPS 2022, code
``stevenstalder/NN-Explainer``, ``src/config_files/explainer_training``). ``"default"`` is the
argument default of their training module, which equals their VGG16-VOC setting.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class ExplainerHyperparameters:
    """Learning rate, loss weights and area bounds of the Explainer objective.

    The total loss is:

        L = L_class(f(m*x), y) + entropy_weight * L_entropy(f((1-m)*x))
            + tv_weight * (TV(m) + TV(n)) + area_weight * L_area
            + target_area_weight * mean(m) + nontarget_area_weight * mean(n)

    where ``m`` is the target mask and ``n`` the non-target mask
    (see [`ctc_plugin.explainer.losses`][ctc_plugin.explainer.losses]).

    Attributes:
        lr: Adam learning rate.
        entropy_weight: Weight ``lambda_e`` of the entropy of the inverse-masked prediction.
        tv_weight: Weight ``lambda_tv`` of the total variation of the target and non-target masks.
        area_weight: Weight ``lambda_a`` of the per-class area hinge.
        target_area_weight: Weight ``lambda_t`` of the mean of the target mask.
        nontarget_area_weight: Weight ``lambda_nc`` of the mean of the non-target mask.
        a_min: Smallest area of a present class's mask, as a fraction of the image's pixels.
        a_max: Largest area of a present class's mask, as a fraction of the image's pixels.
    """

    lr: float = 1e-5
    entropy_weight: float = 1.0
    tv_weight: float = 1.0
    area_weight: float = 1.0
    target_area_weight: float = 0.1
    nontarget_area_weight: float = 0.3
    a_min: float = 0.05
    a_max: float = 0.3

    def __post_init__(self) -> None:
        """Check that every value is usable."""
        for field in fields(self):
            value = getattr(self, field.name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(
                    f"{field.name} must be a finite non-negative number, got {value!r}"
                )
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.a_min <= self.a_max <= 1.0:
            raise ValueError(
                f"need 0 <= a_min <= a_max <= 1 (fractions of the image area), "
                f"got a_min={self.a_min}, a_max={self.a_max}"
            )

    def updated(self, **overrides: float | None) -> ExplainerHyperparameters:
        """Return a copy with the given values replaced; ``None`` values are ignored."""
        return replace(self, **{k: float(v) for k, v in overrides.items() if v is not None})

    def as_dict(self) -> dict[str, float]:
        """Return the values as a plain dictionary (stored in checkpoints)."""
        return {k: float(v) for k, v in asdict(self).items()}


#: The published settings, by name (lower case, ``"{classifier}-{dataset}"``).
PRESETS: dict[str, ExplainerHyperparameters] = {
    "default": ExplainerHyperparameters(),
    "vgg16-voc": ExplainerHyperparameters(
        lr=1e-5,
        entropy_weight=1.0,
        tv_weight=1.0,
        area_weight=1.0,
        target_area_weight=0.1,
        nontarget_area_weight=0.3,
    ),
    "resnet50-voc": ExplainerHyperparameters(
        lr=1e-4,
        entropy_weight=3.0,
        tv_weight=1.0,
        area_weight=0.8,
        target_area_weight=0.01,
        nontarget_area_weight=0.3,
    ),
    "vgg16-coco": ExplainerHyperparameters(
        lr=1e-5,
        entropy_weight=1.0,
        tv_weight=0.3,
        area_weight=0.3,
        target_area_weight=0.03,
        nontarget_area_weight=0.1,
    ),
    "resnet50-coco": ExplainerHyperparameters(
        lr=1e-5,
        entropy_weight=3.0,
        tv_weight=0.05,
        area_weight=0.1,
        target_area_weight=0.01,
        nontarget_area_weight=0.03,
    ),
}


def get_preset(name: str | ExplainerHyperparameters) -> ExplainerHyperparameters:
    """Return the hyper-parameters of a published setting.

    Args:
        name: ``"default"``, ``"vgg16-voc"``, ``"resnet50-voc"``, ``"vgg16-coco"`` or
            ``"resnet50-coco"`` (case and ``_``/``-`` are ignored), or an
            [`ExplainerHyperparameters`][ctc_plugin.explainer.presets.ExplainerHyperparameters],
            returned unchanged.

    Returns:
        The hyper-parameters.

    Raises:
        ValueError: If the name is not a known preset.
    """
    if isinstance(name, ExplainerHyperparameters):
        return name
    key = str(name).lower().replace("_", "-")
    if key not in PRESETS:
        raise ValueError(f"unknown Explainer preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key]


def preset_names() -> list[str]:
    """Return the names accepted by [`get_preset`][ctc_plugin.explainer.presets.get_preset]."""
    return sorted(PRESETS)
