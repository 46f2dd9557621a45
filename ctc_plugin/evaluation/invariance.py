"""Input invariance (Kindermans et al., 2019): explanations under a compensated constant shift.

`shifted_model` copies a classifier and changes its first layer so that
``shifted(x + shift) == model(x)`` exactly: the first layer's bias absorbs ``W @ shift``. A
zero-padded first convolution would see the shift inside the image but not in its padding, so its
padding moves into a `ShiftPad2d` that pads with the shift value, keeping the equality exact at
the borders too. A per-channel affine preprocessing before the first layer (the zoo models'
``(x - mean) / std``) is allowed: the shift the layer sees is measured. The two models compute
the same function of the image content; a method is input-invariant when it explains both the
same way.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctc_plugin.concurrency import CallScope
from ctc_plugin.evaluation.arguments import (
    Method,
    check_images,
    explain,
    model_targets,
    target_renamed,
)
from ctc_plugin.inputs import check_eval_mode, is_finite_number

__all__ = [
    "InvarianceResult",
    "ShiftPad2d",
    "first_layer_shift",
    "shifted_model",
    "input_invariance",
]


def _first_layer_input(model: nn.Module, example: Tensor) -> tuple[str, Tensor]:
    """Name and input of the first ``Conv2d`` or ``Linear`` module the model calls.

    Only this pass is recorded (a `CallScope`), not another thread's through the same model.
    """
    calls: list[tuple[str, Tensor]] = []
    scope = CallScope()

    def record(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            calls.append((name, inputs[0].detach().clone()))

        return hook

    handles = [
        module.register_forward_pre_hook(scope.only(record(name)))
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    ]
    try:
        with scope, torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    if not calls:
        raise ValueError("the model calls no nn.Conv2d or nn.Linear; cannot build a shifted copy")
    return calls[0]


def first_layer_shift(model: nn.Module, shift: float, example: Tensor) -> tuple[str, Tensor]:
    """Find the first layer and the constant shift its input sees when the model's input shifts.

    A model may preprocess its input before the first layer (the zoo models normalise with
    ``(x - mean) / std``); an affine per-channel preprocessing turns the input shift into a
    per-channel constant, which is measured here.

    Returns:
        The layer's name and its per-channel input shift ``(C,)`` (``(features,)`` for Linear).

    Raises:
        ValueError: when the shift does not reach the first layer as a per-channel constant.
        TrainingModeError: A BatchNorm, dropout or tracked InstanceNorm in training mode: the
            forward passes that measure the shift would change its running statistics.
    """
    check_eval_mode(model)
    name, plain = _first_layer_input(model, example)
    name_shifted, moved = _first_layer_input(model, example + shift)
    delta = moved - plain
    per_channel = delta.transpose(0, 1).flatten(1)
    if name_shifted != name or not torch.allclose(
        per_channel, per_channel[:, :1].expand_as(per_channel), atol=1e-5, rtol=1e-4
    ):
        raise ValueError(
            f"a constant input shift does not reach the first layer {name!r} as a per-channel "
            "constant (the model preprocesses its input non-affinely); input invariance cannot "
            "be tested on this model"
        )
    return name, per_channel[:, 0]


class ShiftPad2d(nn.Module):
    """Zero-pad ``x - value`` and add ``value`` back: pads each channel with its own constant.

    Args:
        padding: ``(left, right, top, bottom)`` as for `torch.nn.functional.pad`.
        value: ``(C,)`` padding value per channel.
    """

    def __init__(self, padding: tuple[int, int, int, int], value: Tensor) -> None:
        super().__init__()
        self.padding = padding
        self.register_buffer("value", value.detach().clone().view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Pad ``x`` with the per-channel values."""
        return F.pad(x - self.value, self.padding) + self.value


def shifted_model(model: nn.Module, shift: float, example: Tensor) -> nn.Module:
    """Return a copy of ``model`` with ``copy(x + shift) == model(x)`` for every input ``x``.

    Args:
        model: Classifier whose first layer is an ``nn.Conv2d`` (integer padding, any
            ``padding_mode``) or ``nn.Linear``, reached by the input through at most a
            per-channel affine preprocessing.
        shift: Constant added to every input value.
        example: An input batch used to find the first layer.

    Returns:
        A new module (same train/eval mode); ``model`` is not modified.

    Raises:
        TrainingModeError: A BatchNorm, dropout or tracked InstanceNorm in training mode: the
            forward pass that finds the first layer would change its running statistics.
    """
    name, delta = first_layer_shift(model, shift, example)
    shifted = copy.deepcopy(model)
    layer = shifted.get_submodule(name)
    with torch.no_grad():
        total = _weight_times_shift(layer, delta)
        bias = layer.bias.clone() if layer.bias is not None else torch.zeros_like(total)
        trained = (layer.bias if layer.bias is not None else layer.weight).requires_grad
        layer.bias = nn.Parameter(bias - total, requires_grad=trained)  # a frozen model stays so
    # reflect, replicate and circular padding pad x + shift with the shifted values: the bias
    # alone compensates; zero padding would pad with 0, not with the shift
    if (
        isinstance(layer, nn.Conv2d)
        and any(p != 0 for p in _padding(layer))
        and layer.padding_mode == "zeros"
    ):
        top, left = _padding(layer)
        layer.padding = (0, 0)
        replacement = nn.Sequential(ShiftPad2d((left, left, top, top), delta), layer)
        replacement.train(layer.training)  # new modules start in training mode: take the layer's
        parent_name, _, child = name.rpartition(".")
        setattr(shifted.get_submodule(parent_name) if parent_name else shifted, child, replacement)
    return shifted


def _weight_times_shift(layer: nn.Module, delta: Tensor) -> Tensor:
    """What a constant input ``delta`` (per input channel) adds to each output of ``layer``.

    A grouped convolution reads only its group's input channels: its weight is
    ``(out, in / groups, kh, kw)`` and output channel ``o`` sees the shifts of group
    ``o // (out / groups)``.
    """
    weight = layer.weight
    groups = getattr(layer, "groups", 1)
    per_output = delta.to(weight).view(groups, -1).repeat_interleave(weight.shape[0] // groups, 0)
    shape = per_output.shape + (1,) * (weight.dim() - 2)
    return (weight * per_output.view(shape)).sum(dim=tuple(range(1, weight.dim())))


def _padding(layer: nn.Conv2d) -> tuple[int, int]:
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return (0, 0)
        raise ValueError(
            "first convolution uses padding='same'; give it explicit integer padding to build "
            "a shifted copy"
        )
    return (int(layer.padding[0]), int(layer.padding[1]))


#: Largest logit gap between a model and its shifted copy, relative to the largest logit
#: magnitude (at least 1), that `input_invariance` takes for float rounding.
GAP_TOLERANCE = 1e-4


@dataclass(frozen=True)
class InvarianceResult:
    """Outcome of the input-invariance test.

    Attributes:
        differences: ``(N,)`` relative L1 change ``sum|a - a'| / sum|a|`` between the explanation
            of ``model`` at ``x`` and of the shifted copy at ``x + shift`` (0 = invariant).
        model_gap: Largest absolute logit difference between the two models (float rounding:
            `input_invariance` refuses a copy whose gap exceeds `GAP_TOLERANCE` times the
            largest logit magnitude, at least 1).
    """

    differences: Tensor
    model_gap: float


@target_renamed
def input_invariance(
    method: Method,
    model: nn.Module,
    images: Tensor,
    target: Tensor | int | list[int] | None = None,
    feature_mask: Tensor | None = None,
    shift: float = -0.5,
) -> InvarianceResult:
    """Explain ``model`` at ``images`` and its shifted copy at ``images + shift``; compare.

    Args:
        method: ``method(model, images, target, feature_mask) -> (N, 1, H, W)``.
        model: The classifier.
        images: ``(N, C, H, W)`` inputs.
        target: Classes to explain; ``None`` = predicted classes.
        feature_mask: Features, reused for the shifted input (the segments are the same).
        shift: The constant input shift (Kindermans et al. used -1 on [0, 1] MNIST).

    Returns:
        An `InvarianceResult`.

    Raises:
        ValueError: If the shifted copy is not the same function as the model (its logits
            differ beyond float rounding): the model reads its raw input after the first layer.
    """
    images = check_images(images)
    if not is_finite_number(shift):
        raise ValueError(f"shift must be a finite number, got {shift!r}")
    labels = model_targets(model, images, target)
    other = shifted_model(model, shift, images)
    moved = images + shift
    with torch.no_grad():
        logits = model(images)
        gap = float((logits - other(moved)).abs().max())
    allowed = GAP_TOLERANCE * max(1.0, float(logits.abs().max()))
    if not gap <= allowed:
        raise ValueError(
            f"the shifted copy of the model is not the same function: its logits at images "
            f"{shift:+g} differ from the model's at the images by up to {gap:.3g} (more than "
            f"{allowed:.3g}), so the test would compare the explanations of two different "
            "models; the model reads its input after the first layer too (a skip from the "
            "raw input, a normalisation by the image's statistics), which a bias cannot "
            "compensate"
        )
    original = explain(method, model, images, labels, feature_mask).double()
    compensated = explain(method, other, moved, labels, feature_mask).double()
    scale = original.flatten(1).abs().sum(dim=1)
    change = (original - compensated).flatten(1).abs().sum(dim=1)
    return InvarianceResult(differences=change / scale.where(scale != 0, 1.0), model_gap=gap)
