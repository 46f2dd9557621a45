"""Relevance heatmaps that guide feature selection: Zennit LRP by default, any method accepted.

The published selection step uses an LRP-alpha1-beta0 heatmap of the classifier.
[`lrp_alpha1beta0`][ctc_plugin.features.relevance.lrp_alpha1beta0] builds it as a Zennit
composite (``AlphaBeta(alpha=1, beta=0)`` on convolutions and linear layers; Zennit's own
``EpsilonAlpha2Beta1`` is a different rule), and
[`zennit_relevance`][ctc_plugin.features.relevance.zennit_relevance] hands any Zennit composite's
result over as a plain heatmap.
[`relevance_heatmap`][ctc_plugin.features.relevance.relevance_heatmap] accepts every form of
relevance the package takes (a tensor, a Zennit composite, a Captum attribution or a callable:
[`ctc_plugin.relevance`][ctc_plugin.relevance], the one place that runs them).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence

import torch
from zennit.canonizers import Canonizer
from zennit.composites import LayerMapComposite, layer_map_base
from zennit.core import Composite
from zennit.rules import AlphaBeta
from zennit.types import Convolution

from ctc_plugin.canonizers import PositiveEpsMergeBatchNorm
from ctc_plugin.concurrency import exclusive
from ctc_plugin.inputs import check_eval_mode, outside_inference_mode
from ctc_plugin.module_paths import unwrapped
from ctc_plugin.module_state import compiled_code_eager
from ctc_plugin.relevance import Relevance, compute_relevance, one_hot_of, run_composite
from ctc_plugin.targets import class_indices

__all__ = ["lrp_alpha1beta0", "relevance_heatmap", "resolve_target", "zennit_relevance"]

#: A relevance for feature selection: any form of
#: [`Relevance`][ctc_plugin.relevance.Relevance].
RelevanceMethod = Relevance


def lrp_alpha1beta0(
    canonizers: Sequence[Canonizer] | None = None, stabilizer: float = 1e-6
) -> LayerMapComposite:
    """Return a Zennit composite for LRP-alpha1-beta0 (the published selection heatmap).

    Convolutions and linear layers use ``AlphaBeta(alpha=1, beta=0)``; activations pass,
    average pools and sums are normalised (Zennit's base layer map).

    Args:
        canonizers: Zennit canonizers to apply first. Default: Zennit's ``SequentialMergeBatchNorm``
            (as [`PositiveEpsMergeBatchNorm`][ctc_plugin.canonizers.PositiveEpsMergeBatchNorm],
            which also works on torch 2.11), which folds BatchNorm layers into the convolution
            before them. Give ``zennit.torchvision.ResNetCanonizer()`` and friends for torchvision
            models.
        stabilizer: Added to denominators.
    """
    layer_map = layer_map_base(stabilizer) + [
        (Convolution, AlphaBeta(alpha=1.0, beta=0.0, stabilizer=stabilizer)),
        (torch.nn.Linear, AlphaBeta(alpha=1.0, beta=0.0, stabilizer=stabilizer)),
    ]
    chosen = [PositiveEpsMergeBatchNorm()] if canonizers is None else list(canonizers)
    return LayerMapComposite(layer_map=layer_map, canonizers=chosen)


def resolve_target(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None,
) -> torch.Tensor:
    """Return a ``LongTensor`` ``(N,)`` of target classes (``None``: the predicted class).

    ``target`` takes Captum's forms
    ([`ctc_plugin.targets.class_indices`][ctc_plugin.targets.class_indices]); negative classes are
    kept as given (they count from the end where the classes are known).

    Raises:
        ValueError: A target that is not integer class indices, or not one class or one per
            image.
    """
    if target is None:
        with torch.no_grad(), compiled_code_eager():  # the model's prediction, not its graph's
            return model(images).argmax(dim=1)
    return class_indices(target, images.shape[0], device=images.device)


@outside_inference_mode  # the copy it merges BatchNorm on must be able to take gradients
def zennit_relevance(
    model: torch.nn.Module,
    images: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    composite: Composite | None = None,
) -> torch.Tensor:
    """Run a Zennit composite on the classifier and return the relevance heatmap.

    The composite's hooks and canonizers are removed when the call ends, also on error, so the
    model is left as it was; called inside the caller's own ``with composite.context(model)``,
    it uses that registration and leaves it in place, as Zennit's attributors do. A model with
    BatchNorm or dropout in training mode is refused before anything runs (its statistics would
    change and the heatmap would depend on the rest of the batch): pass it in eval mode. It
    runs with gradients on, also where the caller turned them off (``torch.no_grad()``,
    ``torch.inference_mode()``).

    Args:
        model: The classifier.
        images: Input batch ``(N, C, H, W)`` as the model takes it.
        target: Class per image, one class for all, or ``None`` for the predicted class.
        composite: Any Zennit composite; default
            [`lrp_alpha1beta0()`][ctc_plugin.features.relevance.lrp_alpha1beta0], whose
            BatchNorm merging is checked on a copy of the model: where it changes the logits
            (pre-activation blocks such as DenseNet's) the relevance is computed without
            canonizers and a ``RuntimeWarning`` says so.

    Returns:
        Relevance summed over channels, ``(N, H, W)``.

    Raises:
        TrainingModeError: The model has BatchNorm or dropout in training mode (call
            ``model.eval()``); nothing has run.
        RuntimeError: The composite is registered on another model (an open ``with`` block
            there); nothing has run.
        ValueError: The composite's canonizers would change one module twice
            ([`check_canonizers`][ctc_plugin.canonizers.check_canonizers]).
    """
    model = unwrapped(model)  # the model inside torch's wrappers: its hooks, its copy
    check_eval_mode(model)
    # its composites change the model, other calls wait; compiled code runs as Python code
    with exclusive(model), compiled_code_eager():
        targets = resolve_target(model, images, target)
        if composite is not None:
            return _run_composite(model, images, targets, composite)[1]
        # The default merges BatchNorm into the layer registered before it, which changes the
        # function of pre-activation blocks (DenseNet: BatchNorm -> ReLU -> conv). Merge on a copy,
        # keep the result only if the logits are unchanged, else run without merging and say so.
        with torch.no_grad():
            expected = model(images)
        try:
            output, relevance = _run_composite(
                copy.deepcopy(model), images, targets, lrp_alpha1beta0()
            )
            tolerance = 1e-3 * (float(expected.abs().max()) + 1.0)
            if float((output - expected).abs().max()) <= tolerance:
                return relevance
        except RuntimeError:
            pass
        warnings.warn(
            "merging BatchNorm into the preceding layer (zennit SequentialMergeBatchNorm) changes "
            "this model's function, as in pre-activation blocks; LRP-alpha1-beta0 ran without "
            "canonizers (BatchNorm passes relevance as a linear layer)",
            RuntimeWarning,
            stacklevel=2,
        )
        return _run_composite(model, images, targets, lrp_alpha1beta0(canonizers=[]))[1]


def _run_composite(
    model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, composite: Composite
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output, relevance summed over channels)`` of one Zennit Gradient run."""
    output, relevance = run_composite(model, composite, images, one_hot_of(targets))
    return output, relevance.sum(dim=1)


def relevance_heatmap(
    method: RelevanceMethod | None,
    model: Callable[[torch.Tensor], torch.Tensor] | None,
    images: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Compute a relevance heatmap ``(N, H, W)`` with whatever method the user passed.

    Args:
        method: ``None`` (LRP-alpha1-beta0 through Zennit, see
            [`zennit_relevance`][ctc_plugin.features.relevance.zennit_relevance]) or any form of
            [`Relevance`][ctc_plugin.relevance.Relevance]: a heatmap tensor, a Zennit
            ``Composite``, a Captum attribution object (anything with
            ``.attribute(inputs, target=...)``, e.g. ``captum.attr.LRP(model)`` or
            ``IntegratedGradients(model)``), or a callable ``method(images, target) -> Tensor``;
            all run by [`compute_relevance`][ctc_plugin.relevance.compute_relevance].
        model: The classifier (needed for ``None``, composites and ``target=None``).
        images: Input batch ``(N, C, H, W)`` as the model takes it.
        target: Class per image, one class for all, or ``None`` for the predicted class.

    Returns:
        The attribution summed over channels when it has them, ``(N, H, W)``.

    Raises:
        ValueError: ``None`` or a composite without a ``torch.nn.Module`` model, a target that is
            not class indices, or a heatmap that does not fit the images.
        TypeError: A method of none of the accepted forms.
    """
    model = unwrapped(model)  # the model inside torch's wrappers
    if method is None:
        if not isinstance(model, torch.nn.Module):
            raise ValueError(
                "the default relevance (LRP-alpha1-beta0, a Zennit composite) runs on the "
                "classifier's modules: pass model=<torch.nn.Module>, or give a relevance"
            )
        return zennit_relevance(model, images, target)
    targets = resolve_target(model, images, target) if model is not None else target
    result = compute_relevance(method, images, targets, model=model)
    return as_heatmap(torch.as_tensor(result), images)


def as_heatmap(relevance: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Bring a relevance tensor to ``(N, H, W)``, summing over channels.

    Raises:
        ValueError: If its shape does not match the images.
    """
    n, _, height, width = images.shape
    result = relevance.detach().to(torch.float32)
    if result.ndim == 2:
        result = result[None]
    if result.ndim == 4:
        result = result.sum(dim=1)
    if result.ndim == 3 and result.shape[0] == 1 and n > 1:
        raise ValueError(f"one heatmap was given for {n} images")
    if tuple(result.shape) != (n, height, width):
        raise ValueError(
            f"relevance of shape {tuple(relevance.shape)} does not fit images "
            f"{tuple(images.shape)}: "
            "expected (N, H, W), (N, 1, H, W) or (N, C, H, W)"
        )
    return result
