"""Class-agnostic masks gated by class maps: the U-Net says *where*, the class maps *which*.

A small U-Net trained as a default explainer outlines the objects but, measured on our data, not
which class each object is (docs/explainer.md). Multiplying its mask by a gate from class activation
maps makes the masks class-specific without further training. The class maps come from a copy of the
classifier (the ``"classifier-gated"`` backbone) or from a small student network distilled from them
(the ``"student-gated"`` backbone, [`ctc_plugin.explainer.student`][ctc_plugin.explainer.student]);
[`ctc_plugin.explainer.student_unet`][ctc_plugin.explainer.student_unet] puts both halves into one
network.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ctc_plugin.explainer.classifier_backbone import checked_class_maps
from ctc_plugin.explainer.maps import check_scale, resize_maps, run_at_scale, select_maps

#: Both logits are clamped to +-LOGIT_BOUND before they are combined: probabilities beyond it
#: (below 4e-18) carry nothing, and exp() of larger magnitudes yields float32 denormals, which
#: are slow on CPUs.
LOGIT_BOUND = 40.0


def product_logits(first: Tensor, second: Tensor) -> Tensor:
    """Return ``logit(sigmoid(first) * sigmoid(second))``, elementwise.

    Computed as ``a + b - log(1 + e^a + e^b)`` with ``a``, ``b`` the logits clamped to
    ``+-LOGIT_BOUND``: no ``logsigmoid`` or ``log1p`` (which torch does not vectorise on CPU)
    and no denormals. ``log`` instead of ``log1p`` loses
    ``e^a + e^b`` only where it is below float precision, an error below that precision.
    """
    a = first.clamp(-LOGIT_BOUND, LOGIT_BOUND)
    b = second.clamp(-LOGIT_BOUND, LOGIT_BOUND)
    return a + b - torch.log(1 + a.exp() + b.exp())


def gate_logits(
    cam: Tensor,
    mask: Tensor,
    target: Tensor | None,
    size: tuple[int, ...],
    sharpness: Tensor,
    threshold: Tensor,
) -> Tensor:
    """Gate mask logits by class maps: ``logit(sigmoid(mask) * sigmoid(a (cam / max cam - t)))``.

    Args:
        cam: ``(N, K, h, w)`` class maps.
        mask: ``(N, K, h', w')`` mask logits.
        target: ``(N,)`` classes to keep one map of per image, or ``None`` for all ``K``.
        size: ``(H, W)`` both are resized to (bilinearly) before they are combined; each class
            map's maximum is taken there.
        sharpness: ``a``.
        threshold: ``t``.

    Returns:
        ``(N, K or 1, H, W)`` logits. A class map with no positive value gives an empty mask.
    """
    if target is not None:
        cam, mask = select_maps(cam, target), select_maps(mask, target)
    cam = resize_maps(cam, size)
    mask = resize_maps(mask, size)
    peak = cam.amax(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(cam.dtype).eps)
    return product_logits(mask, sharpness * (cam / peak - threshold))


class GatedMaskBackbone(nn.Module):
    """A class-agnostic mask network gated by class activation maps.

    ``mask_c = sigmoid(S_c) * sigmoid(a * (CAM_c / max CAM_c - t))``: ``S`` are the logits of a
    small U-Net (typically a trained default explainer's, run on the image resized by
    ``mask_scale``), ``CAM_c`` the class maps resized to the image with their maximum over the
    image, ``a`` (sharpness) and ``t`` (threshold) learnable scalars. A class with no positive
    class map anywhere gets an empty mask. Returns the logits of ``mask_c``.

    Args:
        class_maps: Module mapping images ``(N, C, H, W)`` to class maps
            ``(N, num_classes, h, w)``: a
            [`class_map_encoder`][ctc_plugin.explainer.classifier_backbone.class_map_encoder] (the
            classifier's head applied per position) or a
            [`ClassMapStudent`][ctc_plugin.explainer.student.ClassMapStudent]. Held, not copied.
        num_classes: Classes of the classifier.
        width: Channels at full resolution of the U-Net.
        depth: Resolutions of the U-Net.
        in_channels: Channels of the images.
        mask_scale: Factor in (0, 1] by which images are resized before the U-Net.
        sharpness: Initial ``a``.
        threshold: Initial ``t``.

    Raises:
        ValueError: For a ``mask_scale`` outside (0, 1].
    """

    def __init__(
        self,
        class_maps: nn.Module,
        num_classes: int,
        width: int = 8,
        depth: int = 3,
        in_channels: int = 3,
        mask_scale: float = 1.0,
        sharpness: float = 10.0,
        threshold: float = 0.3,
    ) -> None:
        super().__init__()
        from ctc_plugin.explainer.network import SmallUNet

        self.mask_scale = check_scale("mask_scale", mask_scale)
        self.num_classes = num_classes
        self.encoder = class_maps
        self.mask = SmallUNet(in_channels, num_classes, width, depth)
        self.sharpness = nn.Parameter(torch.tensor(float(sharpness)))
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))

    @property
    def input_memory_format(self) -> torch.memory_format:
        """The class-map network's preferred input memory format (channels-last by default).

        A classifier copy runs fastest on channels-last inputs; a student (and the U-Net) on
        contiguous ones.
        """
        return getattr(self.encoder, "input_memory_format", torch.channels_last)

    def forward(self, images: Tensor) -> Tensor:
        """Return ``(N, num_classes, H, W)`` logits of the gated masks."""
        return self._gated_logits(images, None)

    def target_logits(self, images: Tensor, target: Tensor) -> Tensor:
        """Return ``forward(images)[range(N), target]`` (``(N, 1, H, W)``), computing only it."""
        return self._gated_logits(images, target)

    def _gated_logits(self, images: Tensor, target: Tensor | None) -> Tensor:
        cam = checked_class_maps(self.encoder(images), self.num_classes, "the class-map network")
        mask = run_at_scale(self.mask, images, self.mask_scale)
        return gate_logits(cam, mask, target, images.shape[-2:], self.sharpness, self.threshold)
