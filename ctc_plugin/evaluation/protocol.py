"""The published CTC invariance/sensitivity protocol, with its defects fixed.

The protocol perturbs each image (blur, Gaussian noise, uniform noise), explains the original and
the perturbed image, and measures the L2 distance between the two explanations after normalising
each one on its own. Images whose prediction survives the perturbation form the *kept* group
(small distances = invariance); images whose prediction changes form the *changed* group (large
distances = sensitivity); Welch's t-test compares the groups.

Fixed with respect to the reference code: perturbations are done in float and clipped (see
`ctc_plugin.evaluation.perturbations`); every explanation is normalised by its own L1 norm, so
signed maps and maps summing to zero are handled; the perturbed image is explained for its *own*
prediction by default (the reference reused the original label); and the perturbed image can be
re-segmented instead of reusing the original features (``segmenter=``), which the reference's
reuse of the original masks flattered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

from ctc_plugin.evaluation.arguments import (
    Method,
    as_maps,
    check_count,
    explain,
    model_targets,
    predict,
    target_renamed,
)
from ctc_plugin.evaluation.perturbations import check_unit_range, perturb, severity_value

__all__ = [
    "DEFAULT_PERTURBATIONS",
    "NORMALISATIONS",
    "ProtocolResult",
    "WelchResult",
    "normalise_explanations",
    "explanation_distance",
    "image_key",
    "noise_generator",
    "run_protocol",
    "welch_test",
]

Normalisation = Literal["l1", "sum", "max"]

#: The values of ``normalisation`` (`normalise_explanations`' modes).
NORMALISATIONS: tuple[str, ...] = ("l1", "sum", "max")

#: The reference's five perturbations: blur, small/big Gaussian noise, small/big uniform noise.
DEFAULT_PERTURBATIONS: tuple[tuple[str, str], ...] = (
    ("blur", "small"),
    ("gaussian", "small"),
    ("gaussian", "big"),
    ("uniform", "small"),
    ("uniform", "big"),
)


def normalise_explanations(maps: Tensor | np.ndarray, mode: Normalisation = "l1") -> Tensor:
    """Normalise every explanation on its own, returning float64 ``(N, H, W)``.

    Args:
        maps: Attribution maps ``(N, [C,] H, W)``.
        mode: ``"l1"`` divides by the sum of absolute values (works for signed maps);
            ``"sum"`` divides by the plain sum (the reference's choice; fails when a sum is 0);
            ``"max"`` divides by the largest absolute value.

    Raises:
        ValueError: for an unknown mode, or ``"sum"`` on a map whose sum is zero.
    """
    values = as_maps(maps)
    flat = values.flatten(1)
    if mode == "l1":
        scale = flat.abs().sum(dim=1)
    elif mode == "sum":
        scale = flat.sum(dim=1)
        if (scale == 0).any():
            raise ValueError("a map sums to zero; sum normalisation is undefined, use mode='l1'")
    elif mode == "max":
        scale = flat.abs().amax(dim=1)
    else:
        raise ValueError(f"mode must be 'l1', 'sum' or 'max', got {mode!r}")
    scale = scale.where(scale != 0, 1.0)  # an all-zero map stays all zero
    return values / scale[:, None, None]


def explanation_distance(
    first: Tensor | np.ndarray, second: Tensor | np.ndarray, mode: Normalisation = "l1"
) -> Tensor:
    """L2 distance between two batches of explanations, each normalised on its own, ``(N,)``.

    Args:
        first: ``(N, ...)`` explanations.
        second: Explanations of the same shape.
        mode: How each is normalised (``"l1"``, see `normalise_explanations`).

    Raises:
        ValueError: The two batches differ in shape.
    """
    a, b = normalise_explanations(first, mode), normalise_explanations(second, mode)
    if a.shape != b.shape:
        raise ValueError(f"explanations differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a - b).flatten(1).norm(dim=1)


@dataclass(frozen=True)
class ProtocolResult:
    """Distances for one perturbation.

    Attributes:
        kind: Perturbation kind (``"blur"``, ``"gaussian"``, ``"uniform"``).
        severity: Level name or numeric parameter.
        distances: ``(N,)`` L2 distance between the normalised original and perturbed maps.
        kept: ``(N,)`` bool, True where the prediction did not change.
    """

    kind: str
    severity: str | float
    distances: Tensor
    kept: Tensor


@dataclass(frozen=True)
class WelchResult:
    """Welch's t-test of changed-group distances against kept-group distances.

    Attributes:
        statistic: t statistic; positive when explanations move more when the prediction
            changes than when it is kept (the desired behaviour). NaN if a group has < 2 members.
        pvalue: Two-sided p-value.
        mean_kept: Mean distance in the kept group (lower = more invariant).
        mean_changed: Mean distance in the changed group (higher = more sensitive).
        n_kept: Size of the kept group.
        n_changed: Size of the changed group.
    """

    statistic: float
    pvalue: float
    mean_kept: float
    mean_changed: float
    n_kept: int
    n_changed: int


@target_renamed
def run_protocol(
    method: Method,
    model: nn.Module,
    images: Tensor,
    target: Tensor | int | list[int] | None = None,
    feature_mask: Tensor | None = None,
    perturbations: Sequence[tuple[str, str | float]] = DEFAULT_PERTURBATIONS,
    segmenter: Callable[[Tensor], Tensor] | None = None,
    normalisation: Normalisation = "l1",
    perturbed_target: Literal["predicted", "original"] = "predicted",
    seed: int = 0,
) -> list[ProtocolResult]:
    """Run the invariance/sensitivity protocol for one method.

    Args:
        method: ``method(model, images, target, feature_mask) -> (N, 1, H, W)``.
        model: The classifier (inputs in [0, 1], since perturbations clip to that range).
        images: ``(N, C, H, W)`` float images in [0, 1].
        target: Classes explained for the originals; ``None`` = predicted classes.
        feature_mask: Features for the originals (and the perturbed images unless
            ``segmenter`` is given); ``None`` for methods without features.
        perturbations: ``(kind, severity)`` pairs, see `ctc_plugin.evaluation.perturbations`.
        segmenter: If given, the perturbed images are re-segmented with it
            (``segmenter(images) -> (N, 1, H, W)``) instead of reusing ``feature_mask``.
        normalisation: Per-explanation normalisation before the L2 distance.
        perturbed_target: ``"predicted"``: explain a perturbed image whose prediction changed
            for its new prediction, and one whose prediction was kept for the same target as
            its original (with an explicit ``target`` that differs from the predictions, a kept
            image would otherwise compare explanations of two classes). ``"original"``: every
            perturbed image for the original target (the reference's choice).
        seed: Seed of the noise. Each image draws its noise for each perturbation from a
            generator of its own, seeded with ``seed``, the image's values and the perturbation
            (`noise_generator`): its perturbed copies, and so its distances, do not depend on
            the other images of the call, its place among them, how a data set is split into
            calls or which other perturbations run, and two different images get different
            noise.

    Returns:
        One `ProtocolResult` per perturbation.

    Raises:
        ValueError: For ``perturbed_target`` or ``normalisation`` not among their values, no
            perturbations, an unknown perturbation kind or a severity that is no level name nor
            a finite number in range, a seed that is no integer of at least 0, or images that
            are no non-empty finite image batch with values in [0, 1]: before anything is
            explained.
        TypeError: A ``segmenter`` that cannot be called, before anything is explained.
    """
    if perturbed_target not in ("predicted", "original"):
        raise ValueError(
            f"perturbed_target must be 'predicted' or 'original', got {perturbed_target!r}"
        )
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be 'l1', 'sum' or 'max', got {normalisation!r}")
    perturbations = tuple(perturbations)  # read twice: checked first, then run
    if not perturbations:
        raise ValueError(
            "perturbations is empty; give (kind, severity) pairs, e.g. DEFAULT_PERTURBATIONS"
        )
    for kind, severity in perturbations:
        severity_value(kind, severity)
    if segmenter is not None and not callable(segmenter):
        raise TypeError(
            f"segmenter must be a callable segmenter(images) -> (N, 1, H, W) feature ids, such "
            f"as ctc_plugin.features.SuperpixelSegmenter(); got {type(segmenter).__name__}"
        )
    seed = check_count(seed, "seed", least=0)
    images = check_unit_range(images)  # the perturbations need pixels in [0, 1]
    labels = model_targets(model, images, target)  # refuses a model in training mode first
    original_pred = labels if target is None else predict(model, images)
    reference = explain(method, model, images, labels, feature_mask)
    keys = [image_key(image, seed) for image in images]
    results = []
    for kind, severity in perturbations:
        changed_images = torch.cat(
            [
                perturb(
                    images[i : i + 1],
                    kind,
                    severity,
                    generator=noise_generator(key, kind, severity),
                )
                for i, key in enumerate(keys)
            ]
        )
        pred = predict(model, changed_images)
        kept = pred == original_pred
        # a kept prediction keeps the class explained (also when ``target`` is not the
        # prediction), so the kept group compares explanations of one class
        if perturbed_target == "predicted":
            explained = torch.where(kept, labels.to(pred.device), pred)
        else:
            explained = labels
        mask = feature_mask if segmenter is None else segmenter(changed_images)
        maps = explain(method, model, changed_images, explained, mask)
        results.append(
            ProtocolResult(
                kind=kind,
                severity=severity,
                distances=explanation_distance(reference, maps, normalisation),
                kept=kept.cpu(),
            )
        )
    return results


def image_key(image: Tensor, seed: int) -> bytes:
    """A SHA-256 digest of ``seed`` and the values of ``image`` (one ``(C, H, W)``, as float64)."""
    values = image.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()
    return hashlib.sha256(f"{int(seed)}\0".encode() + values).digest()


def noise_generator(key: bytes, kind: str, severity: str | float) -> torch.Generator:
    """The CPU generator of one image's noise for one perturbation.

    Seeded with the image's `image_key` and the perturbation, so the noise of an image under
    one perturbation is the same whatever else the call perturbs or explains. A numeric
    severity counts by its value as a Python float: ``0.05``, ``np.float64(0.05)`` (from
    ``np.linspace``, say) and ``1`` / ``1.0`` draw the same noise; a level name by its name.
    """
    level = severity if isinstance(severity, str) else float(severity)
    digest = hashlib.sha256(key + f"{kind}\0{level!r}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def welch_test(results: Sequence[ProtocolResult]) -> WelchResult:
    """Pool protocol results into kept and changed groups and compare them with Welch's t-test.

    Uses ``scipy.stats.ttest_ind(changed, kept, equal_var=False)``.

    Raises:
        ValueError: For no results.
    """
    if not results:
        raise ValueError("welch_test needs the results of run_protocol; got none")
    distances = torch.cat([r.distances for r in results]).numpy()
    kept = torch.cat([r.kept for r in results]).numpy().astype(bool)
    kept_values, changed_values = distances[kept], distances[~kept]
    if len(kept_values) >= 2 and len(changed_values) >= 2:
        test = stats.ttest_ind(changed_values, kept_values, equal_var=False)
        statistic, pvalue = float(test.statistic), float(test.pvalue)
    else:
        statistic = pvalue = float("nan")

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if len(values) else float("nan")

    return WelchResult(
        statistic=statistic,
        pvalue=pvalue,
        mean_kept=mean(kept_values),
        mean_changed=mean(changed_values),
        n_kept=len(kept_values),
        n_changed=len(changed_values),
    )
