"""Named backbones for the [`Explainer`][ctc_plugin.Explainer], built by one function.

The [`Explainer`][ctc_plugin.Explainer] takes its backbone as a module, the way Captum's
``LayerGradCam(model, layer)`` takes the layer object and Zennit's composites take rule objects.
This module is the registry of the backbones this package ships, each built by name with only
the settings that apply to it (as torchvision's ``get_model(name, **config)``):

```python
>>> from ctc_plugin import Explainer
>>> from ctc_plugin.explainer.backbones import build_backbone
>>> explainer = Explainer(build_backbone("unet-small", 6, width=4), 6)
>>> explainer.backbone_name, explainer.config()["width"]
('unet-small', 4)

```

- ``"unet-small"``: [`unet_small`][ctc_plugin.explainer.backbones.unet_small], a small U-Net
  (the default explainer);
- ``"classifier"``: [`classifier_copy`][ctc_plugin.explainer.backbones.classifier_copy], a
  trainable copy of the classifier plus a small U-Net;
- ``"classifier-gated"``: [`classifier_gated`][ctc_plugin.explainer.backbones.classifier_gated],
  a small U-Net gated by the classifier's class maps;
- ``"student-gated"``: [`student_gated`][ctc_plugin.explainer.backbones.student_gated], a small
  U-Net gated by a distilled student's class maps;
- ``"student-unet"``: [`student_unet`][ctc_plugin.explainer.backbones.student_unet], class maps
  and masks from one small distilled network;
- ``"deeplabv3_resnet50"``:
  [`deeplabv3_resnet50`][ctc_plugin.explainer.backbones.deeplabv3_resnet50], torchvision's
  DeepLabV3 (the original's);
- ``"lraspp_mobilenet_v3"``:
  [`lraspp_mobilenet_v3`][ctc_plugin.explainer.backbones.lraspp_mobilenet_v3], torchvision's
  LR-ASPP MobileNetV3.

[`build_backbone`][ctc_plugin.explainer.backbones.build_backbone] records on the module how it
was built (its [`BackboneRecipe`][ctc_plugin.explainer.backbones.BackboneRecipe]), which is what
[`Explainer.save`][ctc_plugin.Explainer.save] stores and
[`Explainer.load`][ctc_plugin.Explainer.load] rebuilds from. Any other ``nn.Module`` works as a
backbone too; only saving needs a recipe.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ctc_plugin.explainer.classifier_backbone import ClassifierBackbone, class_map_encoder
from ctc_plugin.explainer.gated import GatedMaskBackbone
from ctc_plugin.explainer.network import SmallUNet
from ctc_plugin.explainer.student import ClassMapStudent
from ctc_plugin.explainer.student_unet import StudentUNet
from ctc_plugin.files import read_state_dict

__all__ = [
    "BACKBONES",
    "BackboneRecipe",
    "build_backbone",
    "classifier_copy",
    "classifier_gated",
    "deeplabv3_resnet50",
    "lraspp_mobilenet_v3",
    "recipe_of",
    "student_gated",
    "student_unet",
    "unet_small",
]

#: Builder arguments that are objects, not settings: given at build and load time, never stored.
OBJECT_ARGUMENTS = ("classifier", "weights")

#: Attribute of a built backbone that holds its recipe.
RECIPE_ATTRIBUTE = "backbone_recipe"


@dataclass(frozen=True)
class BackboneRecipe:
    """How a backbone was built: its registry name and settings (what a saved file stores).

    Attributes:
        name: The key in [`BACKBONES`][ctc_plugin.explainer.backbones.BACKBONES].
        num_classes: Classes of its output maps.
        settings: Every setting of the builder (defaults included), without the object arguments
            (``classifier``, ``weights``).
    """

    name: str
    num_classes: int
    settings: Mapping[str, Any] = field(default_factory=dict)


def unet_small(
    num_classes: int, *, in_channels: int = 3, width: int = 8, depth: int = 3
) -> nn.Module:
    """A [`SmallUNet`][ctc_plugin.explainer.network.SmallUNet], a few thousand parameters.

    Args:
        num_classes: Output maps.
        in_channels: Channels of the images.
        width: Channels at full resolution.
        depth: Resolutions (3: receptive field about 32 pixels; 4: about 70).
    """
    return SmallUNet(in_channels, num_classes, width, depth)


def classifier_copy(
    num_classes: int,
    *,
    classifier: nn.Module,
    head: str,
    in_channels: int = 3,
    width: int = 8,
    depth: int = 3,
) -> nn.Module:
    """A trainable copy of ``classifier`` with its head per position, refined by a small U-Net.

    Class-specific masks; see
    [`ClassifierBackbone`][ctc_plugin.explainer.classifier_backbone.ClassifierBackbone].

    Args:
        num_classes: Classes of the classifier.
        classifier: The model to explain (copied; a file stores the trained copy's weights).
        head: Name of the classifier's head submodule.
        in_channels: Channels of the images.
        width: Channels at full resolution of the refining U-Net.
        depth: Resolutions of that U-Net.
    """
    return ClassifierBackbone(classifier, head, num_classes, width, depth, in_channels)


def classifier_gated(
    num_classes: int,
    *,
    classifier: nn.Module,
    head: str,
    in_channels: int = 3,
    width: int = 8,
    depth: int = 3,
    mask_scale: float = 1.0,
) -> nn.Module:
    """A small U-Net's masks gated by the class maps of a copy of ``classifier``.

    See [`GatedMaskBackbone`][ctc_plugin.explainer.gated.GatedMaskBackbone].

    Args:
        num_classes: Classes of the classifier.
        classifier: The model to explain (copied).
        head: Name of the classifier's head submodule.
        in_channels: Channels of the images.
        width: Channels at full resolution of the U-Net.
        depth: Resolutions of the U-Net.
        mask_scale: Factor in (0, 1] by which the images are resized before the U-Net (the
            class maps always see the full image).
    """
    class_maps = class_map_encoder(classifier, head, num_classes)
    return GatedMaskBackbone(class_maps, num_classes, width, depth, in_channels, mask_scale)


def student_gated(
    num_classes: int,
    *,
    in_channels: int = 3,
    width: int = 8,
    depth: int = 3,
    mask_scale: float = 1.0,
    student_width: int = 8,
) -> nn.Module:
    """A small U-Net's masks gated by the class maps of a small distilled student.

    The student is a [`ClassMapStudent`][ctc_plugin.explainer.student.ClassMapStudent]:
    class-specific at under twice the cost of ``"unet-small"``.

    Args:
        num_classes: Classes of the classifier.
        in_channels: Channels of the images.
        width: Channels at full resolution of the U-Net.
        depth: Resolutions of the U-Net.
        mask_scale: Factor in (0, 1] by which the images are resized before the U-Net.
        student_width: Channels of the student's first block.
    """
    class_maps = ClassMapStudent(num_classes, student_width, in_channels)
    return GatedMaskBackbone(class_maps, num_classes, width, depth, in_channels, mask_scale)


def student_unet(num_classes: int, *, in_channels: int = 3, width: int = 8) -> nn.Module:
    """One small network giving class maps and masks, distilled from two teachers.

    See [`StudentUNet`][ctc_plugin.explainer.student_unet.StudentUNet]: class-specific at about
    the cost of ``"unet-small"``. Its depth is fixed.

    Args:
        num_classes: Classes of the classifier.
        in_channels: Channels of the images.
        width: Channels of its first block.
    """
    return StudentUNet(num_classes, width, in_channels)


def deeplabv3_resnet50(num_classes: int, *, weights: str | Path | None = None) -> nn.Module:
    """Torchvision's DeepLabV3 with a ResNet-50 encoder (the original Explainer's), 3 channels.

    Args:
        num_classes: Output maps.
        weights: Local file with the torchvision ImageNet classification weights of ResNet-50
            for the encoder; ``None`` initialises randomly. Nothing is ever downloaded.

    Raises:
        FileNotFoundError: If ``weights`` names a missing file.
        ValueError: If the file does not hold the encoder's weights.
    """
    from torchvision.models import segmentation

    model = segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
    )
    return _load_encoder(model, weights, "", "deeplabv3_resnet50")


def lraspp_mobilenet_v3(num_classes: int, *, weights: str | Path | None = None) -> nn.Module:
    """Torchvision's LR-ASPP with a MobileNetV3-Large encoder, 3 channels.

    Args:
        num_classes: Output maps.
        weights: Local file with the torchvision ImageNet classification weights of
            MobileNetV3-Large for the encoder; ``None`` initialises randomly. Nothing is ever
            downloaded.

    Raises:
        FileNotFoundError: If ``weights`` names a missing file.
        ValueError: If the file does not hold the encoder's weights.
    """
    from torchvision.models import segmentation

    model = segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=num_classes
    )
    return _load_encoder(model, weights, "features.", "lraspp_mobilenet_v3")


def _load_encoder(
    model: nn.Module, weights: str | Path | None, prefix: str, name: str
) -> nn.Module:
    """Load a torchvision segmentation model's encoder from classification weights, if given."""
    if weights is None:
        return model
    state = read_state_dict(weights, "backbone weights")
    state = {k.removeprefix(prefix): v for k, v in state.items()}
    wanted = model.backbone.state_dict()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise ValueError(
            f"backbone weights {str(weights)!r} do not fit {name}'s encoder: "
            f"{len(missing)} tensors missing (e.g. {missing[:3]}); give the torchvision "
            f"ImageNet classification weights of {name.split('_', 1)[1]}"
        )
    model.backbone.load_state_dict({k: state[k] for k in wanted})
    return model


#: The named backbones and their builders.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "unet-small": unet_small,
    "classifier": classifier_copy,
    "classifier-gated": classifier_gated,
    "student-gated": student_gated,
    "student-unet": student_unet,
    "deeplabv3_resnet50": deeplabv3_resnet50,
    "lraspp_mobilenet_v3": lraspp_mobilenet_v3,
}


def _builder(name: str) -> Callable[..., nn.Module]:
    if name not in BACKBONES:
        raise ValueError(
            f"unknown Explainer backbone {name!r}; use one of {tuple(BACKBONES)} or pass your "
            "own nn.Module to Explainer"
        )
    return BACKBONES[name]


def settings_of(name: str) -> tuple[str, ...]:
    """Return the settings the backbone ``name`` takes (object arguments included)."""
    parameters = inspect.signature(_builder(name)).parameters
    return tuple(p for p in parameters if p != "num_classes")


def build_backbone(name: str, num_classes: int, **options: Any) -> nn.Module:
    """Build the backbone ``name`` and record its recipe on it.

    Args:
        name: A key of [`BACKBONES`][ctc_plugin.explainer.backbones.BACKBONES].
        num_classes: Classes of the classifier to explain.
        **options: The builder's settings (see its page; e.g. ``width=4`` for
            ``"unet-small"``, ``classifier=model, head="head"`` for ``"classifier"``).

    Returns:
        The backbone, with its [`BackboneRecipe`][ctc_plugin.explainer.backbones.BackboneRecipe]
        as ``backbone_recipe``.

    Raises:
        ValueError: For an unknown name, a setting the backbone does not take (the message
            lists those it takes), a missing required one (``classifier=``, ``head=``), or
            unusable values.
        FileNotFoundError: If ``weights`` names a missing file.
    """
    builder = _builder(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    signature = inspect.signature(builder)
    accepted = settings_of(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"backbone {name!r} does not take {', '.join(f'{k}=' for k in unknown)}; it takes "
            f"{', '.join(f'{k}=' for k in accepted)}"
        )
    required = [
        p.name
        for p in signature.parameters.values()
        if p.default is inspect.Parameter.empty and p.name != "num_classes"
    ]
    absent = [k for k in required if k not in options]
    if absent:
        raise ValueError(
            f"backbone {name!r} needs {' and '.join(f'{k}=' for k in absent)} (classifier: the "
            "model to explain; head: the name of its head module)"
        )
    bound = signature.bind(num_classes, **options)
    bound.apply_defaults()
    module = builder(num_classes, **options)
    settings = {
        k: v for k, v in bound.arguments.items() if k != "num_classes" and k not in OBJECT_ARGUMENTS
    }
    setattr(module, RECIPE_ATTRIBUTE, BackboneRecipe(name, num_classes, settings))
    return module


def recipe_of(backbone: nn.Module) -> BackboneRecipe | None:
    """Return how ``backbone`` was built by ``build_backbone``, or ``None`` (another module)."""
    recipe = getattr(backbone, RECIPE_ATTRIBUTE, None)
    return recipe if isinstance(recipe, BackboneRecipe) else None


#: Settings every file of format ``ctc-plugin-explainer/1`` written before the backbone
#: registry stores, whether or not its backbone used them (``depth`` of ``"student-unet"``,
#: ``width`` and ``depth`` of the torchvision backbones): dropped on load when they do not apply.
LEGACY_SETTINGS = ("width", "depth")


def settings_from_file(name: str, stored: Mapping[str, Any]) -> dict[str, Any]:
    """Return a saved backbone config's settings without the legacy ones that do not apply.

    Args:
        name: The stored backbone name.
        stored: The stored settings (the file's config without ``num_classes``, ``backbone``,
            ``in_channels``, ``input_scale``).

    Raises:
        ValueError: For an unknown backbone name.
    """
    accepted = settings_of(name)
    return {k: v for k, v in stored.items() if k in accepted or k not in LEGACY_SETTINGS}
