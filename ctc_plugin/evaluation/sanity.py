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

from ctc_plugin.evaluation._inputs import Method, as_targets, explain, predict

__all__ = ["RandomisationStep", "parameter_layers", "cascading_randomisation", "rank_correlation"]


def parameter_layers(model: nn.Module, example: Tensor) -> list[str]:
    """Names of the modules that own parameters and can ``reset_parameters()``, in call order."""
    order: list[str] = []
    candidates = {
        name: module
        for name, module in model.named_modules()
        if hasattr(module, "reset_parameters") and any(True for _ in module.parameters(False))
    }
    handles = [
        module.register_forward_pre_hook(lambda *_, name=name: order.append(name))
        for name, module in candidates.items()
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order))  # first call wins, repeated calls (shared modules) once


def rank_correlation(first: Tensor, second: Tensor, absolute: bool = True) -> Tensor:
    """Spearman rank correlation per image between two ``(N, 1, H, W)`` map batches, ``(N,)``.

    A constant map has no ranking; its correlation is NaN.
    """
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


def cascading_randomisation(
    method: Method,
    model: nn.Module,
    images: Tensor,
    targets: Tensor | int | list[int] | None = None,
    feature_mask: Tensor | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    absolute: bool = True,
) -> list[RandomisationStep]:
    """Randomise layers from the top down, cumulatively, and track the rank correlation.

    Args:
        method: ``method(model, images, targets, feature_mask) -> (N, 1, H, W)``.
        model: The classifier (left unchanged: a copy is randomised).
        images: ``(N, C, H, W)`` inputs.
        targets: Classes explained at every step; ``None`` = the original model's predictions.
        feature_mask: Features, reused at every step.
        max_steps: Explain after at most this many evenly spaced steps (the last step always
            randomises every layer); ``None`` explains after every layer.
        seed: Seed of the re-initialisation.
        absolute: Correlate absolute values (Adebayo et al.) instead of signed maps.

    Returns:
        One `RandomisationStep` per explained step, from the top layer down.
    """
    labels = predict(model, images) if targets is None else as_targets(targets, len(images))
    original = explain(method, model, images, labels, feature_mask)
    names = parameter_layers(model, images)[::-1]
    if not names:
        raise ValueError("the model has no layers with parameters to randomise")
    checkpoints = set(range(len(names)))
    if max_steps is not None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        spaced = np.linspace(0, len(names) - 1, min(max_steps, len(names)))
        checkpoints = {int(round(i)) for i in spaced}
    randomised = copy.deepcopy(model)
    steps = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for index, name in enumerate(names):
            randomised.get_submodule(name).reset_parameters()
            if index in checkpoints:
                maps = explain(method, randomised, images, labels, feature_mask)
                steps.append(RandomisationStep(name, rank_correlation(original, maps, absolute)))
    return steps
