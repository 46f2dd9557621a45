"""One small network that gives both halves of the gate: class maps (*which*) and masks (*where*).

The ``"student-gated"`` backbone runs two networks per explanation: a small U-Net for the masks and
a student of the classifier's class maps for the gate.
[`StudentUNet`][ctc_plugin.explainer.student_unet.StudentUNet] shares one encoder between them: its
deepest features give the class maps, a one-step decoder back to a quarter of the input's resolution
gives the masks, and the same gate as
[`GatedMaskBackbone`][ctc_plugin.explainer.gated.GatedMaskBackbone] combines them (the
``"student-unet"`` backbone of [`build_backbone`][ctc_plugin.explainer.backbones.build_backbone]).
[`distil_student_unet`][ctc_plugin.explainer.student_unet.distil_student_unet] trains it from two
teachers: the classifier's class maps and a trained default explainer's masks. Both remain accounts
of the explained model: the class maps are the classifier's, the masks those the published objective
trained against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctc_plugin.explainer.classifier_backbone import checked_class_maps
from ctc_plugin.explainer.gated import gate_logits
from ctc_plugin.explainer.maps import run_at_scale
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.explainer.student import (
    check_schedule,
    class_map_targets,
    conv_bn_relu,
    fit_to_teachers,
    mark_trained,
)
from ctc_plugin.explainer.training import frozen
from ctc_plugin.inputs import (
    check_gradient_weights,
    check_images,
    check_nothing_shared,
    with_gradients,
)

#: Stride-2 blocks of the encoder: a 96x96 image gives 6x6 class maps (the zoo classifiers').
STAGES = 4

#: The decoder joins the encoder's features after this many stride-2 blocks: masks at 1/4 of
#: the input's resolution (24x24 for 96x96 images).
MASK_STAGE = 2


class StudentUNet(nn.Module):
    """Class maps and class masks from one small CNN, gated into class-specific masks.

    Encoder: ``STAGES`` stride-2 blocks (3x3 convolution, BatchNorm, ReLU) with ``width``, ``2
    width``, then ``4 width`` channels and one stride-1 block; a 1x1 convolution turns its output
    into class maps ``CAM`` at ``1 / 2**STAGES`` of the input's resolution. Decoder: those features
    resized bilinearly to the output of block ``MASK_STAGE`` (``1/4`` of the input's resolution) and
    concatenated with it, one block, and a 1x1 convolution to mask logits ``S``. The output is
    ``logit(sigmoid(S_c) * sigmoid(a * (CAM_c / max CAM_c - t)))`` at the masks' resolution, as in
    [`GatedMaskBackbone`][ctc_plugin.explainer.gated.GatedMaskBackbone] (``a`` sharpness, ``t``
    threshold, learnable scalars). With the defaults: 32 thousand parameters (31,894 for 6 classes).
    Each stride-2 block rounds odd sizes up (a 37-pixel side gives 19, then 10).

    Args:
        num_classes: Classes of the classifier.
        width: Channels of the first block.
        in_channels: Channels of the images.
        sharpness: Initial ``a``.
        threshold: Initial ``t``.

    Raises:
        ValueError: If ``width`` is below 1.
    """

    #: Memory format its inputs run fastest in on a CPU: its 3x3 convolutions run faster on
    #: channels-last inputs (measurements: docs/explainer.md).
    input_memory_format = torch.channels_last

    def __init__(
        self,
        num_classes: int,
        width: int = 8,
        in_channels: int = 3,
        sharpness: float = 10.0,
        threshold: float = 0.3,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        widths = [width * 2 ** min(stage, 2) for stage in range(STAGES)]
        self.encoder = nn.ModuleList(
            nn.Sequential(*conv_bn_relu(before, after, stride=2))
            for before, after in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        self.bottom = nn.Sequential(*conv_bn_relu(widths[-1], widths[-1], stride=1))
        self.classes = nn.Conv2d(widths[-1], num_classes, 1)
        skip = widths[MASK_STAGE - 1]
        self.decoder = nn.Sequential(*conv_bn_relu(widths[-1] + skip, 2 * width, stride=1))
        self.head = nn.Conv2d(2 * width, num_classes, 1)
        self.sharpness = nn.Parameter(torch.tensor(float(sharpness)))
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))

    def maps(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Return the class maps ``(N, K, H/16, W/16)`` and mask logits ``(N, K, H/4, W/4)``.

        Sizes rounded up at each stride-2 block (see the class docstring).
        """
        x = images
        skip = None
        for stage, block in enumerate(self.encoder, start=1):
            x = block(x)
            if stage == MASK_STAGE:
                skip = x
        assert skip is not None
        x = self.bottom(x)
        up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.classes(x), self.head(self.decoder(torch.cat([up, skip], dim=1)))

    def forward(self, images: Tensor) -> Tensor:
        """Return the gated mask logits of every class, ``(N, K, H/4, W/4)``."""
        cam, mask = self.maps(images)
        return gate_logits(cam, mask, None, mask.shape[-2:], self.sharpness, self.threshold)

    def target_logits(self, images: Tensor, target: Tensor) -> Tensor:
        """Return ``forward(images)[range(N), target]`` (``(N, 1, H/4, W/4)``), gating only it."""
        cam, mask = self.maps(images)
        return gate_logits(cam, mask, target, mask.shape[-2:], self.sharpness, self.threshold)


@with_gradients
def distil_student_unet(
    network: StudentUNet | Explainer,
    classifier: nn.Module,
    head: str,
    mask_explainer: nn.Module,
    images: Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    show_progress: bool = False,
) -> list[float]:
    """Train ``network``'s class maps on the classifier's and its masks on ``mask_explainer``'s.

    Two teachers, one pass over the data per epoch: the classifier's head applied per position (a
    copy, see [`class_map_encoder`][ctc_plugin.explainer.classifier_backbone.class_map_encoder]; the
    classifier is not touched), resized to the class maps' size, with the loss of
    [`distil_class_maps`][ctc_plugin.explainer.student.distil_class_maps] (mean squared difference
    over the teacher maps' variance); and the masks ``sigmoid`` of ``mask_explainer(images)`` (a
    trained [`Explainer`][ctc_plugin.Explainer], typically the default kind), area-averaged to the
    masks' size, with binary cross-entropy. The loss is their sum; Adam with a one-cycle learning
    rate, batches drawn with ``seed``. Leaves ``network`` in eval mode; the classifier and
    ``mask_explainer`` keep their modes and parameters.

    Given the [`Explainer`][ctc_plugin.Explainer] whose backbone is the student (the documented
    ``Explainer(build_backbone("student-unet", num_classes), num_classes)``), its backbone is
    trained on the images resized by its ``input_scale`` (as it sees them when explaining) and
    the explainer is marked trained: its ``trained_steps`` grow by the distillation's steps
    and its ``trained_image_size`` becomes the images' size (see
    [`mark_trained`][ctc_plugin.explainer.student.mark_trained]). Given the bare
    ``StudentUNet``, only the network is trained.

    Args:
        network: The [`StudentUNet`][ctc_plugin.explainer.student_unet.StudentUNet] to train,
            or the Explainer whose backbone it is.
        classifier: The explained model.
        head: Name of its head submodule (global pooling, then linear layers).
        mask_explainer: Module mapping images to ``(N, num_classes, H, W)`` mask logits.
        images: ``(M, C, H, W)`` training images.
        epochs: Passes over the images.
        batch_size: Images per step.
        lr: Peak learning rate.
        seed: Seed of the batch order.
        show_progress: Draw a tqdm bar with the loss.

    Returns:
        The mean loss of each epoch.

    Raises:
        ValueError: For images that are not a finite floating-point batch (the message names
            the examples with NaN), fewer images than one batch, non-positive epochs, or a
            network with another class count than the classifier's head or the mask explainer,
            or a student that shares a parameter or a BatchNorm with either.
    """
    explainer = network if isinstance(network, Explainer) else None
    student = network.backbone if explainer is not None else network
    channels = (
        explainer.in_channels if explainer is not None else getattr(student, "in_channels", None)
    )
    images = check_images(images, channels=channels)
    check_schedule(epochs, batch_size, len(images))
    check_gradient_weights(network, "distil_student_unet (training the student)")
    check_nothing_shared(student, classifier, "the student", "the classifier")
    check_nothing_shared(student, mask_explainer, "the student", "the mask explainer")
    seen = (
        images if explainer is None else run_at_scale(nn.Identity(), images, explainer.input_scale)
    )
    with torch.no_grad():
        probe_cam, probe_mask = student.eval().maps(seen[:1])
        class_maps = class_map_targets(
            classifier, head, images, student.num_classes, probe_cam.shape[-2:]
        )
        masks = _mask_targets(mask_explainer, images, student.num_classes, probe_mask.shape[-2:])
    variance = class_maps.var().clamp_min(torch.finfo(class_maps.dtype).eps)

    def loss(batch: Tensor) -> Tensor:
        cam, mask = student.maps(seen[batch])
        cam_loss = F.mse_loss(cam, class_maps[batch]) / variance
        return cam_loss + F.binary_cross_entropy_with_logits(mask, masks[batch])

    history = fit_to_teachers(
        student,
        loss,
        len(images),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        show_progress=show_progress,
        description="distil class maps and masks",
    )
    if explainer is not None:
        mark_trained(explainer, epochs * (len(images) // batch_size), images.shape[-2:], classifier)
        explainer.eval()
    return history


def _mask_targets(
    mask_explainer: nn.Module, images: Tensor, num_classes: int, size: tuple[int, ...]
) -> Tensor:
    """Return ``sigmoid(mask_explainer(images))`` area-averaged to ``size``, 256 images at a time.

    The explainer runs in eval mode and is given back in the modes it came in.
    """
    with frozen(mask_explainer), torch.no_grad():
        masks = []
        for chunk in images.split(256):
            logits = checked_class_maps(mask_explainer(chunk), num_classes, "the mask explainer")
            masks.append(F.adaptive_avg_pool2d(logits.sigmoid(), size))
    return torch.cat(masks)
