"""Sanity check (Adebayo et al., 2018): cascading model-parameter randomisation.

Layers are re-initialised one after another from the output towards the input (cumulatively), and
after each step the method explains the same images again. An explanation that depends on what the
model learned must decorrelate from the original one; a method whose maps stay highly rank
correlated is explaining the input (edges, colours), not the model. Rank correlation is
Spearman's rho from ``scipy.stats.spearmanr`` on the maps' absolute values, as in the paper.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

from ctc_plugin.concurrency import CallScope
from ctc_plugin.evaluation.arguments import (
    Method,
    check_count,
    check_images,
    explain,
    model_targets,
    target_renamed,
)
from ctc_plugin.inputs import check_eval_mode

__all__ = ["RandomisationStep", "parameter_layers", "cascading_randomisation", "rank_correlation"]


def _call_order(model: nn.Module, example: Tensor) -> list[str]:
    """Names of the modules one forward pass of ``example`` calls, in order of first call.

    Only this pass is recorded (a `CallScope`), not another thread's through the same model.
    """
    order: list[str] = []
    scope = CallScope()
    handles = [
        module.register_forward_pre_hook(scope.only(lambda *_, name=name: order.append(name)))
        for name, module in model.named_modules()
    ]
    try:
        with scope, torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order))  # first call wins, repeated calls (shared modules) once


def _owners(model: nn.Module, example: Tensor) -> dict[str, list[str]]:
    """Map each layer (in call order) to the modules whose own parameters it randomises.

    A module that owns parameters is its own layer when the forward pass calls it; otherwise
    (``nn.MultiheadAttention``'s ``out_proj``, whose weight it reads without calling it; a
    norm module whose parameters a functional call reads) it belongs to its nearest called
    ancestor, so every parameter of the model belongs to exactly one layer.
    """
    called = _call_order(model, example)
    rank = {name: i for i, name in enumerate(called)}
    layers: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        layer = name
        while layer not in rank and layer:
            layer = layer.rpartition(".")[0]
        layers.setdefault(layer, []).append(name)
    return {name: layers[name] for name in sorted(layers, key=lambda n: rank.get(n, -1))}


def parameter_layers(model: nn.Module, example: Tensor) -> list[str]:
    """Names of the layers the cascade randomises, in call order.

    A layer is a module the forward pass calls that owns parameters, directly or through
    submodules the pass never calls; every parameter of the model belongs to exactly one
    layer (parameters held by the model itself, such as a class token, make the model, ``""``,
    a layer).

    Raises:
        TrainingModeError: A BatchNorm, dropout or tracked InstanceNorm in training mode: the
            forward pass that finds the layers would change its running statistics.
    """
    check_eval_mode(model)
    return list(_owners(model, example))


def _randomise(module: nn.Module) -> None:
    """Re-initialise the parameters ``module`` owns itself.

    Through its ``reset_parameters()`` (or ``nn.MultiheadAttention``'s
    ``_reset_parameters()``) where it has one. A parameter whose version counter that method
    did not move is drawn anew from a normal distribution with the trained values' mean and
    standard deviation, as is every parameter of a module without such a method (a class
    token, position embeddings, a layer scale); with a spread of ``max(|mean|, 1)`` where the
    values have none (a scalar temperature). The counter stays where the method did not write
    the parameter: the old hook-based ``weight_norm``'s ``weight_g`` and ``weight_v`` and
    ``spectral_norm``'s ``weight_orig``, from which each forward pass computes the weight it
    resets; a parameter a subclass adds. It stays too where the method wrote through
    ``.data``: such a parameter is drawn once more, still at random.
    """
    own = list(module.parameters(recurse=False))
    versions = [parameter._version for parameter in own]
    for method in ("reset_parameters", "_reset_parameters"):
        if callable(getattr(module, method, None)):
            getattr(module, method)()
            break
    with torch.no_grad():
        for parameter, version in zip(own, versions):
            if parameter._version == version:
                mean, std = parameter.mean(), parameter.std(correction=0)
                # a scalar (a temperature) or equal values have no spread to draw with
                scale = std if bool(std > 0) else mean.abs().clamp_min(1.0)
                parameter.copy_(torch.randn_like(parameter) * scale + mean)


def rank_correlation(first: Tensor, second: Tensor, absolute: bool = True) -> Tensor:
    """Spearman rank correlation per image between two ``(N, 1, H, W)`` map batches, ``(N,)``.

    A constant map has no ranking; its correlation is NaN.

    Args:
        first: ``(N, 1, H, W)`` maps.
        second: Maps of the same shape.
        absolute: Rank the maps' absolute values (as the sanity check does).

    Raises:
        ValueError: The two batches differ in shape (one correlation per image pair).
    """
    if tuple(first.shape) != tuple(second.shape):
        raise ValueError(
            f"maps to correlate must have the same shape, got {tuple(first.shape)} and "
            f"{tuple(second.shape)}: pass maps of the same images, one (1, H, W) map each, in "
            "the same order and at the same size (explain both at the input's resolution)"
        )
    a = first.detach().flatten(1).double().cpu().numpy()
    b = second.detach().flatten(1).double().cpu().numpy()
    if absolute:
        a, b = np.abs(a), np.abs(b)
    out = []
    for x, y in zip(a, b):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            out.append(float("nan"))
        else:
            out.append(float(stats.spearmanr(x, y).statistic))
    return torch.tensor(out, dtype=torch.float64)


@dataclass(frozen=True)
class RandomisationStep:
    """One step of the cascade.

    Attributes:
        layer: The last layer re-initialised at this step (all layers after it are random too).
        correlation: ``(N,)`` Spearman correlation with the original explanation.
    """

    layer: str
    correlation: Tensor


@target_renamed
def cascading_randomisation(
    method: Method,
    model: nn.Module,
    images: Tensor,
    target: Tensor | int | list[int] | None = None,
    feature_mask: Tensor | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    absolute: bool = True,
) -> list[RandomisationStep]:
    """Randomise layers from the top down, cumulatively, and track the rank correlation.

    Args:
        method: ``method(model, images, target, feature_mask) -> (N, 1, H, W)``.
        model: The classifier (left unchanged: a copy is randomised).
        images: ``(N, C, H, W)`` inputs.
        target: Classes explained at every step; ``None`` = the original model's predictions.
        feature_mask: Features, reused at every step.
        max_steps: Explain after at most this many evenly spaced steps, the last of which
            has every layer randomised (``max_steps=1``: only that one); ``None`` explains
            after every layer.
        seed: Seed of the re-initialisation. The layers are drawn from it alone: a method
            that draws random numbers itself does not change the randomised models, so
            every method is explained on the same ones.
        absolute: Correlate absolute values (Adebayo et al.) instead of signed maps.

    Returns:
        One `RandomisationStep` per explained step, from the top layer down.

    Raises:
        ValueError: The model has no layer with parameters to randomise.
    """
    images = check_images(images)
    if max_steps is not None:
        max_steps = check_count(max_steps, "max_steps")
    seed = check_count(seed, "seed", least=0)
    labels = model_targets(model, images, target)
    original = explain(method, model, images, labels, feature_mask)
    layers = _owners(model, images)
    names = list(layers)[::-1]
    if not names:
        raise ValueError("the model has no layers with parameters to randomise")
    checkpoints = _checkpoints(len(names), max_steps)
    randomised = copy.deepcopy(model)
    steps = []
    # torch.manual_seed seeds every CUDA device too: fork their generators where CUDA is in use,
    # so the caller's CUDA random state is left as it was
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for index, name in enumerate(names):
            for owner in layers[name]:
                _randomise(randomised.get_submodule(owner))
            if index in checkpoints:
                # the method's own draws (SmoothGrad, an unseeded Lime) are forgotten after
                # it: the next layers are drawn from the seed's stream, whatever it explained with
                with torch.random.fork_rng(devices=cuda):
                    maps = explain(method, randomised, images, labels, feature_mask)
                steps.append(RandomisationStep(name, rank_correlation(original, maps, absolute)))
    return steps


def _checkpoints(layers: int, max_steps: int | None) -> set[int]:
    """Indices of the cascade steps to explain after: all, or ``max_steps`` evenly spaced.

    The last step (every layer random) is always among them; a single step is the last one.
    """
    if max_steps is None or max_steps >= layers:
        return set(range(layers))
    if max_steps == 1:
        return {layers - 1}
    return {int(round(i)) for i in np.linspace(0, layers - 1, max_steps)}
