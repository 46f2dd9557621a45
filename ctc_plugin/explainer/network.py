"""The Explainer: a segmentation network with one mask per class of a frozen classifier."""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctc_plugin.explainer.maps import check_scale, resize_maps, run_at_scale, select_maps
from ctc_plugin.files import read_data_file, read_state_dict
from ctc_plugin.weights import record_in_manifest

if TYPE_CHECKING:  # pragma: no cover
    from ctc_plugin.explainer.presets import ExplainerHyperparameters
    from ctc_plugin.explainer.training import FitResult

#: Names accepted as ``backbone`` besides an ``nn.Module``.
BACKBONES = (
    "unet-small",
    "classifier",
    "classifier-gated",
    "student-gated",
    "student-unet",
    "deeplabv3_resnet50",
    "lraspp_mobilenet_v3",
)

#: Backbones built from (a copy of) the explained classifier.
CLASSIFIER_BACKBONES = ("classifier", "classifier-gated")

#: Backbones whose small U-Net masks are gated by class maps (they take ``mask_scale``).
GATED_BACKBONES = ("classifier-gated", "student-gated")

#: Tag stored in files written by [`Explainer.save`][ctc_plugin.Explainer.save].
FILE_FORMAT = "ctc-plugin-explainer/1"


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by GroupNorm (up to 4 groups) and ReLU."""
    groups = math.gcd(4, out_channels)  # 4 groups when the width allows, fewer otherwise
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """A small U-Net: ``depth`` resolutions with ``width``, ``2*width``, ... channels.

    Any input size works (the decoder resizes to each skip connection), and the output has
    the input's resolution. Each extra level doubles the receptive field of the deepest
    features (about 32 pixels at ``depth=3``, 70 at ``depth=4``).

    Args:
        in_channels: Channels of the input images.
        num_classes: Output maps.
        width: Channels at full resolution.
        depth: Number of resolutions (at least 2).

    Raises:
        ValueError: If ``depth`` is below 2.
    """

    #: Memory format its inputs run fastest in on a CPU: its thin convolutions run the plain
    #: (contiguous) kernels faster than channels-last ones (``Explainer.input_memory_format``).
    input_memory_format = torch.contiguous_format

    def __init__(self, in_channels: int, num_classes: int, width: int = 8, depth: int = 3) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        self.depth = depth
        channels = [width * 2**level for level in range(depth)]
        # Modules are named enc1.., dec1.. (the names of the original three-level network).
        for level, out in enumerate(channels, start=1):
            self.add_module(
                f"enc{level}", _conv_block(channels[level - 2] if level > 1 else in_channels, out)
            )
        for level in range(depth - 1, 0, -1):
            out = channels[level - 1]
            self.add_module(f"dec{level}", _conv_block(channels[level] + out, out))
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``(N, num_classes, H, W)`` logits."""
        skips = []
        for level in range(1, self.depth + 1):
            x = self.get_submodule(f"enc{level}")(F.max_pool2d(x, 2) if level > 1 else x)
            skips.append(x)
        for level in range(self.depth - 1, 0, -1):
            skip = skips[level - 1]
            up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.get_submodule(f"dec{level}")(torch.cat([up, skip], dim=1))
        return self.head(x)


def _torchvision_backbone(
    name: str, num_classes: int, backbone_weights: str | Path | None
) -> nn.Module:
    """Build a torchvision segmentation model, randomly initialised or from a local file."""
    from torchvision.models import segmentation

    if name == "deeplabv3_resnet50":
        model = segmentation.deeplabv3_resnet50(
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
        )
        prefix = ""
    else:
        model = segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=num_classes
        )
        prefix = "features."
    if backbone_weights is not None:
        state = read_state_dict(backbone_weights, "backbone weights")
        state = {k.removeprefix(prefix): v for k, v in state.items()}
        wanted = model.backbone.state_dict()
        missing = sorted(set(wanted) - set(state))
        if missing:
            raise ValueError(
                f"backbone weights {str(backbone_weights)!r} do not fit {name}'s encoder: "
                f"{len(missing)} tensors missing (e.g. {missing[:3]}); give the torchvision "
                f"ImageNet classification weights of {name.split('_', 1)[1]}"
            )
        model.backbone.load_state_dict({k: state[k] for k in wanted})
    return model


class Explainer(nn.Module):
    """A mask network: one logit map per class at input resolution; masks are their sigmoid.

    Stalder et al. (NeurIPS 2022) train a segmentation network against a frozen classifier
    so that the mask of class ``c`` keeps exactly the evidence the classifier uses for ``c``.
    Train it with [`fit`][ctc_plugin.Explainer.fit]; use it from Captum code through
    [`ExplainerAttribution`][ctc_plugin.ExplainerAttribution].

    Args:
        num_classes: Classes of the classifier to explain.
        backbone: ``"unet-small"`` (default, a few thousand parameters), ``"classifier"`` (a
            trainable copy of the classifier with its head applied per position, plus a small U-Net:
            class-specific masks, see
            [`ClassifierBackbone`][ctc_plugin.explainer.classifier_backbone.ClassifierBackbone]),
            ``"classifier-gated"`` (a small U-Net's masks gated by the classifier's class maps, see
            [`GatedMaskBackbone`][ctc_plugin.explainer.gated.GatedMaskBackbone]),
            ``"student-gated"`` (the same gate from a small student distilled from the classifier's
            class maps, [`ClassMapStudent`][ctc_plugin.explainer.student.ClassMapStudent]:
            class-specific at under twice the cost of ``"unet-small"``), ``"student-unet"`` (the
            class maps and the masks from one small network trained from both teachers,
            [`StudentUNet`][ctc_plugin.explainer.student_unet.StudentUNet]: class-specific at about
            the cost of ``"unet-small"``), the torchvision segmentation models
            ``"deeplabv3_resnet50"`` (the original's) or ``"lraspp_mobilenet_v3"``, or any
            ``nn.Module`` mapping ``(N, in_channels, H, W)`` to ``(N, num_classes, h, w)`` (a tensor
            or a dict with ``"out"``); smaller outputs are resized bilinearly to ``(H, W)``.
        in_channels: Channels of the images (the small networks; torchvision models take 3).
        width: Channels at full resolution of the small U-Net (``"unet-small"``, the
            refining U-Net of ``"classifier"`` and the gated backbones' U-Net), or of the first
            block of ``"student-unet"``.
        depth: Resolutions of that U-Net (3: receptive field about 32 pixels; 4: about
            70, for objects larger than that). ``"student-unet"`` has a fixed depth and
            refuses another value.
        input_scale: Factor in (0, 1] by which images are resized (bilinearly) before the
            backbone; the maps are resized back to the input's size. 0.25 makes the small U-Net
            about 5x cheaper at coarser mask boundaries.
        backbone_weights: Local file with the ImageNet classification weights of the
            torchvision backbone's encoder (ResNet-50 or MobileNetV3-Large state dict). ``None``
            initialises randomly. Nothing is ever downloaded.
        classifier: The classifier to explain (``"classifier"`` and ``"classifier-gated"``
            backbones only; copied).
        head: Name of the classifier's head submodule (those backbones only).
        mask_scale: Factor in (0, 1] by which the gated backbones resize the images before
            their U-Net (their class maps always see the full image).
        student_width: Channels of the first block of the ``"student-gated"`` backbone's
            student (``"student-unet"`` takes its first block's channels as ``width``).

    Raises:
        ValueError: For an unknown backbone name or unusable settings.
        FileNotFoundError: If ``backbone_weights`` names a missing file.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str | nn.Module = "unet-small",
        *,
        in_channels: int = 3,
        width: int = 8,
        depth: int = 3,
        input_scale: float = 1.0,
        backbone_weights: str | Path | None = None,
        classifier: nn.Module | None = None,
        head: str | None = None,
        mask_scale: float = 1.0,
        student_width: int = 8,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.width = width
        self.depth = depth
        self.input_scale = check_scale("input_scale", input_scale)
        #: Name of the classifier's head module (``backbone="classifier"`` only).
        self.classifier_head = head
        self.mask_scale = float(mask_scale)
        self.student_width = student_width
        #: Plain data stored with the weights by [`save`][ctc_plugin.Explainer.save] (e.g. how it
        #: was trained).
        self.metadata: dict[str, Any] = {}
        wants_classifier = isinstance(backbone, str) and backbone in CLASSIFIER_BACKBONES
        if (classifier is not None, head is not None) != (wants_classifier, wants_classifier):
            raise ValueError(
                f"backbones {CLASSIFIER_BACKBONES} need classifier= (the model to explain) and "
                "head= (the name of its head module); other backbones take neither"
            )
        if mask_scale != 1.0 and backbone not in GATED_BACKBONES:
            raise ValueError(f"mask_scale applies to the backbones {GATED_BACKBONES} only")
        if depth != 3 and backbone == "student-unet":
            raise ValueError('depth does not apply to backbone="student-unet" (a fixed depth)')
        if student_width != 8 and backbone != "student-gated":
            hint = ' (backbone="student-unet" takes width=)' if backbone == "student-unet" else ""
            raise ValueError(f'student_width applies to backbone="student-gated" only{hint}')
        if isinstance(backbone, nn.Module):
            self.backbone_name = None
            self.backbone = backbone
        elif backbone in ("unet-small", "student-unet", *CLASSIFIER_BACKBONES, *GATED_BACKBONES):
            if backbone_weights is not None:
                raise ValueError("backbone_weights applies to torchvision backbones only")
            if width < 1:
                raise ValueError(f"width must be >= 1, got {width}")
            self.backbone_name = backbone
            if backbone == "unet-small":
                self.backbone = SmallUNet(in_channels, num_classes, width, depth)
            elif backbone == "student-unet":
                from ctc_plugin.explainer.student_unet import StudentUNet

                self.backbone = StudentUNet(num_classes, width, in_channels)
            elif backbone == "classifier":
                from ctc_plugin.explainer.classifier_backbone import ClassifierBackbone

                assert classifier is not None and head is not None
                self.backbone = ClassifierBackbone(
                    classifier, head, num_classes, width, depth, in_channels
                )
            else:
                self.backbone = self._gated_backbone(
                    backbone, classifier, head, mask_scale, student_width
                )
        elif backbone in BACKBONES:
            if in_channels != 3:
                raise ValueError(
                    f"{backbone} takes 3-channel images, got in_channels={in_channels}"
                )
            self.backbone_name = backbone
            self.backbone = _torchvision_backbone(backbone, num_classes, backbone_weights)
        else:
            raise ValueError(
                f"unknown Explainer backbone {backbone!r}; use one of {BACKBONES} or an nn.Module"
            )
        # Persisted with the weights: how many optimisation steps trained it, and on which size.
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("image_size", torch.zeros(2, dtype=torch.long))

    def _gated_backbone(
        self,
        backbone: str,
        classifier: nn.Module | None,
        head: str | None,
        mask_scale: float,
        student_width: int,
    ) -> nn.Module:
        """Build a gated backbone: class maps from a classifier copy or from a student."""
        from ctc_plugin.explainer.classifier_backbone import class_map_encoder
        from ctc_plugin.explainer.gated import GatedMaskBackbone
        from ctc_plugin.explainer.student import ClassMapStudent

        if backbone == "classifier-gated":
            assert classifier is not None and head is not None
            class_maps = class_map_encoder(classifier, head, self.num_classes)
        else:
            class_maps = ClassMapStudent(self.num_classes, student_width, self.in_channels)
        return GatedMaskBackbone(
            class_maps, self.num_classes, self.width, self.depth, self.in_channels, mask_scale
        )

    @property
    def is_trained(self) -> bool:
        """Whether `fit` (or loaded weights) has trained this explainer."""
        return bool(self.trained_steps.item() > 0)

    @property
    def input_memory_format(self) -> torch.memory_format:
        """The memory format the backbone's inputs run fastest in (channels-last by default).

        On this project's CPU, channels-last inputs took the classifier-based backbones of the
        shipped class-specific explainers 0.52-0.76 of the time of contiguous ones, while the
        small U-Net (``"unet-small"``) ran 6-9 % faster on contiguous inputs. A backbone states
        its own with an ``input_memory_format`` attribute.
        """
        return getattr(self.backbone, "input_memory_format", torch.channels_last)

    @property
    def trained_image_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the images it was trained on, or ``None`` when unknown."""
        h, w = (int(v) for v in self.image_size.tolist())
        return (h, w) if h > 0 else None

    def forward(self, images: Tensor) -> Tensor:
        """Return the class logit maps ``(N, num_classes, H, W)`` at the input resolution."""
        return resize_maps(self._backbone_maps(images), images.shape[-2:])

    def target_logits(self, images: Tensor, target: Tensor) -> Tensor:
        """Return the logit map of one class per image, ``(N, 1, H, W)``.

        The same values as ``forward(images)[range(N), target]``, but only the selected maps
        are resized to the input (the resizing acts on each map alone), which saves most of the
        resizing when the backbone works at a reduced resolution. A backbone with its own
        ``target_logits(images, target)`` method (the gated backbones) computes only the
        selected maps.

        Args:
            images: ``(N, in_channels, H, W)`` images.
            target: ``(N,)`` class indices.
        """
        return resize_maps(self._backbone_maps(images, target), images.shape[-2:])

    def _backbone_maps(self, images: Tensor, target: Tensor | None = None) -> Tensor:
        """Check the images and return the backbone's maps (of ``target`` only, if given).

        The backbone sees the images resized by ``input_scale``; the maps keep its resolution.
        """
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"the explainer takes images shaped (N, {self.in_channels}, H, W), "
                f"got {tuple(images.shape)}"
            )
        selective = getattr(self.backbone, "target_logits", None)
        if target is not None and callable(selective):
            return run_at_scale(partial(selective, target=target), images, self.input_scale)
        out = run_at_scale(self.backbone, images, self.input_scale)
        if isinstance(out, dict):
            out = out["out"]
        if out.dim() != 4 or out.shape[1] != self.num_classes:
            raise ValueError(
                f"the backbone must return (N, {self.num_classes}, h, w) maps, "
                f"got {tuple(out.shape)}"
            )
        return out if target is None else select_maps(out, target)

    def masks(self, images: Tensor) -> Tensor:
        """Return the class masks ``sigmoid(forward(images))``, ``(N, num_classes, H, W)``."""
        return self(images).sigmoid()

    def fit(
        self,
        classifier: nn.Module,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any] | None = None,
        **options: Any,
    ) -> FitResult:
        """Train the explainer against a frozen classifier; see `.training.fit_explainer`.

        Args:
            classifier: The model to explain (kept frozen, in eval mode, restored afterwards).
            train_loader: Batches of dicts with ``"image"`` and ``"label"`` (like
                [`ctc_plugin.datasets.ShapesDataset`][ctc_plugin.datasets.ShapesDataset] items) or
                ``(image, label)`` tuples.
            val_loader: Optional batches for early stopping (the training loss otherwise).
            **options: Keyword options of
                [`fit_explainer`][ctc_plugin.explainer.training.fit_explainer] (``preset``, ``lr``,
                the loss weights, ``a_min``, ``a_max``, ``epochs``, ``patience``, ``seed``,
                ``checkpoint``, ``resume``, ...).

        Returns:
            The per-epoch history and where training stopped.
        """
        from ctc_plugin.explainer.training import fit_explainer

        return fit_explainer(self, classifier, train_loader, val_loader, **options)

    def config(self) -> dict[str, Any]:
        """Return the constructor arguments needed to rebuild this explainer."""
        if self.backbone_name is None:
            raise ValueError("an explainer with a custom nn.Module backbone has no saveable config")
        config = {
            "num_classes": self.num_classes,
            "backbone": self.backbone_name,
            "in_channels": self.in_channels,
            "width": self.width,
            "depth": self.depth,
            "input_scale": self.input_scale,
        }
        if self.classifier_head is not None:
            config["head"] = self.classifier_head
        if self.backbone_name in GATED_BACKBONES:
            config["mask_scale"] = self.mask_scale
        if self.backbone_name == "student-gated":
            config["student_width"] = self.student_width
        return config

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write the configuration, the weights and optional metadata to ``path``.

        A file written into the shipped weights folder (``ctc_plugin/zoo/weights``) gets its
        entry in the weights manifest updated, so loading it later passes the digest check.

        Args:
            path: File to write (parent folders are created).
            metadata: Plain data (numbers, strings, lists, dicts) stored alongside, e.g. how
                the explainer was trained.

        Returns:
            The path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}
        payload = {
            "format": FILE_FORMAT,
            "config": self.config(),
            "state_dict": state,
            "metadata": metadata or {},
        }
        torch.save(payload, path)
        record_in_manifest(path)  # a file written into the shipped weights folder stays listed
        return path

    @classmethod
    def load(cls, path: str | Path, classifier: nn.Module | None = None) -> Explainer:
        """Rebuild an explainer written by [`save`][ctc_plugin.Explainer.save] (data-only loading).

        The file is read by [`ctc_plugin.files.read_data_file`][ctc_plugin.files.read_data_file] (a
        shipped file is checked against the weights manifest; an empty, truncated, corrupt or
        foreign file is one clear error naming the path and what is wrong).

        Args:
            path: The file.
            classifier: For files of a classifier backbone: a model of the explained
                classifier's architecture (its weights do not matter, the file holds the
                trained copy's). Ignored by other files.

        Raises:
            FileNotFoundError: If the file does not exist.
            ValueError: If the file is unreadable, is not an explainer written by
                [`save`][ctc_plugin.Explainer.save], lacks entries (the message names them), holds a
                state dict that does not fit its config, or needs a classifier and none was given.
        """
        payload = read_data_file(path, "explainer file")
        if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
            raise ValueError(
                f"{str(path)!r} is not an explainer file written by Explainer.save "
                f"(expected format {FILE_FORMAT!r})"
            )
        missing = [k for k in ("config", "state_dict") if not isinstance(payload.get(k), dict)]
        config = {} if "config" in missing else dict(payload["config"])
        if "config" not in missing:
            missing += [f"config[{k!r}]" for k in ("num_classes", "backbone") if k not in config]
        if missing:
            raise ValueError(
                f"explainer file {str(path)!r} is incomplete: it lacks {', '.join(missing)}; "
                "write it again with Explainer.save (or the command that trained it)"
            )
        if config["backbone"] in CLASSIFIER_BACKBONES:
            if classifier is None:
                raise ValueError(
                    f"{str(path)!r} holds a copy of its classifier: pass classifier= (a model of "
                    "the explained architecture, e.g. ctc_plugin.zoo.build(family, num_classes))"
                )
            config["classifier"] = classifier
        try:
            explainer = cls(**config)
        except TypeError as error:
            raise ValueError(
                f"explainer file {str(path)!r} has a config this version cannot build ({error}); "
                "write it again with Explainer.save"
            ) from error
        try:
            explainer.load_state_dict(payload["state_dict"])
        except RuntimeError as error:
            shown = {k: v for k, v in config.items() if k != "classifier"}
            detail = " ".join(line.strip() for line in str(error).splitlines()[1:4])
            raise ValueError(
                f"the state dict in explainer file {str(path)!r} does not fit its config "
                f"{shown}: {detail or error}"
            ) from error
        explainer.metadata = dict(payload.get("metadata", {}))
        return explainer.eval()

    def hyperparameters(self) -> ExplainerHyperparameters | None:
        """Return the hyper-parameters it was trained with, when loaded from a file."""
        from ctc_plugin.explainer.presets import ExplainerHyperparameters

        values = getattr(self, "metadata", {}).get("hyperparameters")
        return ExplainerHyperparameters(**values) if values else None
