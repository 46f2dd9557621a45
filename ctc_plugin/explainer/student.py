"""A small student network distilled from a classifier's class activation maps.

The gate of [`GatedMaskBackbone`][ctc_plugin.explainer.gated.GatedMaskBackbone] needs the
classifier's class maps (its head applied per position). Running a copy of the classifier costs
about one forward pass per explanation; a student a few layers deep, trained to reproduce those
maps, gives the gate at a fraction of that (the ``"student-gated"`` backbone). The student learns
the explained classifier's maps, not the data's labels, so the gate stays an account of that model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctc_plugin.explainer.classifier_backbone import class_map_encoder
from ctc_plugin.explainer.maps import resize_maps
from ctc_plugin.inputs import (
    check_gradient_weights,
    check_images,
    check_nothing_shared,
    is_integer,
    with_gradients,
)


def conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    """A 3x3 convolution (no bias), BatchNorm and ReLU: the students' building block."""
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class ClassMapStudent(nn.Module):
    """A small CNN mapping images to per-class maps at ``1 / 2**stages`` of their resolution.

    ``stages`` stride-2 blocks (3x3 convolution, BatchNorm, ReLU) with ``width``, ``2 width``,
    then ``4 width`` channels, one stride-1 block, and a 1x1 convolution to the classes. With the
    defaults a 96x96 image gives 6x6 maps (the zoo classifiers' class-map size) for 25 thousand
    parameters. Train it with [`distil_class_maps`][ctc_plugin.explainer.student.distil_class_maps].

    Args:
        num_classes: Classes (output maps).
        width: Channels of the first block.
        in_channels: Channels of the images.
        stages: Stride-2 blocks (the output stride is ``2**stages``).

    Raises:
        ValueError: If ``width`` or ``stages`` is below 1.
    """

    #: Memory format its inputs run fastest in on a CPU (see ``Explainer.input_memory_format``):
    #: with it, the gated backbone's small U-Net also gets contiguous inputs.
    input_memory_format = torch.contiguous_format

    def __init__(
        self, num_classes: int, width: int = 8, in_channels: int = 3, stages: int = 4
    ) -> None:
        super().__init__()
        if width < 1 or stages < 1:
            raise ValueError(f"width and stages must be >= 1, got {width} and {stages}")
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in range(stages):
            out = width * 2 ** min(stage, 2)
            layers += conv_bn_relu(channels, out, stride=2)
            channels = out
        layers += conv_bn_relu(channels, channels, stride=1)
        self.features = nn.Sequential(*layers)
        self.classes = nn.Conv2d(channels, num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        """Return ``(N, num_classes, h, w)`` class maps."""
        return self.classes(self.features(images))


@with_gradients
def distil_class_maps(
    student: nn.Module,
    classifier: nn.Module,
    head: str,
    images: Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    show_progress: bool = False,
) -> list[float]:
    """Train ``student`` to reproduce the classifier's class maps on ``images``.

    The teacher is the classifier's head applied per position (a copy, see
    [`class_map_encoder`][ctc_plugin.explainer.classifier_backbone.class_map_encoder]; the
    classifier itself is not touched), resized to the student's map size. The loss is the mean
    squared difference of the maps divided by the teacher maps' variance (so 1.0 is what predicting
    their mean scores); Adam with a one-cycle learning rate, batches drawn with ``seed``. The
    student is left in eval mode.

    Args:
        student: Network mapping images to ``(N, num_classes, h, w)`` maps.
        classifier: The explained model.
        head: Name of its head submodule (global pooling, then linear layers).
        images: ``(M, C, H, W)`` training images.
        epochs: Passes over the images.
        batch_size: Images per step.
        lr: Peak learning rate.
        seed: Seed of the batch order.
        show_progress: Draw a tqdm bar with the loss.

    Returns:
        The mean loss of each epoch.

    Raises:
        ValueError: For images that are not a finite floating-point batch (the message
            names the examples with NaN), fewer images than one batch, non-positive epochs, or
            a student with another class count than the classifier's head (from
            [`class_map_encoder`][ctc_plugin.explainer.classifier_backbone.class_map_encoder]),
            or a student that shares a parameter or a BatchNorm with the classifier.
    """
    images = check_images(images, channels=getattr(student, "in_channels", None))
    check_schedule(epochs, batch_size, len(images))
    check_gradient_weights(student, "distil_class_maps (training the student)")
    check_nothing_shared(student, classifier, "the student", "the classifier")
    with torch.no_grad():
        probe = student.eval()(images[:1])
        targets = class_map_targets(classifier, head, images, probe.shape[1], probe.shape[-2:])
    variance = targets.var().clamp_min(torch.finfo(targets.dtype).eps)

    def loss(batch: Tensor) -> Tensor:
        return F.mse_loss(student(images[batch]), targets[batch]) / variance

    return fit_to_teachers(
        student,
        loss,
        len(images),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        show_progress=show_progress,
        description="distil class maps",
    )


def class_map_targets(
    classifier: nn.Module, head: str, images: Tensor, num_classes: int, size: tuple[int, ...]
) -> Tensor:
    """Return the classifier's class maps of ``images``, resized to ``size``: a student's targets.

    The maps are its head applied per position, computed on a copy
    ([`class_map_encoder`][ctc_plugin.explainer.classifier_backbone.class_map_encoder], which raises
    a ``ValueError`` when the head has another class count than ``num_classes``), 256 images at a
    time, without gradients.
    """
    teacher = class_map_encoder(classifier, head, num_classes).eval()
    with torch.no_grad():
        return torch.cat([resize_maps(teacher(chunk), size) for chunk in images.split(256)])


def mark_trained(
    explainer: nn.Module, steps: int, image_size: Sequence[int], classifier: nn.Module
) -> None:
    """Record a training outside ``fit`` (a distillation) on an Explainer.

    Its ``trained_steps`` grow by ``steps``, its ``image_size`` (``trained_image_size``)
    becomes ``image_size`` and ``classifier`` is recorded as the model it explains
    (``record_classifier``), so that it counts as trained (``is_trained``) and saves and loads
    as such. Its ``metadata`` is emptied: what an earlier training or file recorded (a command,
    hyper-parameters) no longer describes the weights.
    """
    explainer.metadata = {}
    explainer.record_classifier(classifier)
    explainer.trained_steps += int(steps)
    explainer.image_size.copy_(torch.tensor([int(v) for v in image_size[-2:]]))


def check_schedule(epochs: int, batch_size: int, count: int) -> None:
    """Raise a clear error unless ``count`` images give at least one batch for ``epochs >= 1``.

    ``epochs`` and ``batch_size`` must be integers >= 1 (not bools).
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not is_integer(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if count < batch_size:
        raise ValueError(f"distillation needs at least one batch ({batch_size}) of images")


@with_gradients
def fit_to_teachers(
    network: nn.Module,
    loss: Callable[[Tensor], Tensor],
    count: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    show_progress: bool,
    description: str,
) -> list[float]:
    """Minimise ``loss(batch indices)`` over ``count`` examples: the distillations' loop.

    Adam with a one-cycle learning rate peaking at ``lr``; each epoch visits the examples in
    an order drawn with ``seed``, in ``count // batch_size`` full batches. ``network`` trains in
    train mode and is left in eval mode.

    Returns:
        The mean loss of each epoch.

    Raises:
        ValueError: From [`check_schedule`][ctc_plugin.explainer.student.check_schedule].
    """
    from tqdm.auto import tqdm

    check_schedule(epochs, batch_size, count)
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    steps_per_epoch = count // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, lr, total_steps=epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(range(epochs), desc=description, disable=not show_progress)
    network.train()
    for _ in bar:
        order = torch.randperm(count, generator=generator)
        total = 0.0
        for step in range(steps_per_epoch):
            value = loss(order[step * batch_size : (step + 1) * batch_size])
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
            schedule.step()
            total += value.item()
        history.append(total / steps_per_epoch)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    network.eval()
    return history
