"""Relevance-guided selection of complex features (the "modified SAM" of the CTC paper).

From a relevance heatmap of the classifier (LRP-alpha1-beta0 by default), the published method

1. keeps the pixels whose relevance is above BOTH the Jenks natural break of their cell in a
   4 x 4 grid (the 3rd of the 7 break values of a 6-class Jenks split, counting the minimum) AND
   the global 95th percentile;
2. clusters those pixels with DBSCAN on ``(x, y, 2 W R, colour / 3)``, starting from
   ``eps=12, min_samples=20`` and growing both by 1 and 2 until there are at most 7 clusters
   and at most 25 % noise;
3. scores each feature S by ``max_C (|S & C| / |S| + |S & C| / |C|) / 2`` over the clusters C;
4. keeps the top 9 features.

Where we differ from the reference (section 4 of the reference notes): the DBSCAN search is
bounded (``max_search_steps``, with a warning when it ends unconverged); the relevance is scaled
by its maximum magnitude before entering the ``2 W R`` coordinate (the reference used the raw
heatmap, whose scale depends on the model); ties and images without clusters are ranked by the
features' mean relevance; fewer than ``k`` features is not an error; and instead of adding an
all-ones mask, the unselected features are merged into one remainder feature so the result is
still a partition usable as Captum's ``feature_mask``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

import jenkspy
import numpy as np
import torch
from sklearn.cluster import DBSCAN

from ctc_plugin._moved import moved_keywords
from ctc_plugin.features.base import ImageNormalisation
from ctc_plugin.features.relevance import RelevanceMethod, as_heatmap, relevance_heatmap
from ctc_plugin.inputs import check_images, is_integer
from ctc_plugin.wording import caller_stacklevel, counted

__all__ = [
    "FeatureSelection",
    "SelectionConfig",
    "cluster_agreement",
    "cluster_relevant_pixels",
    "relevant_pixels",
    "select_features",
]


@dataclass(frozen=True)
class SelectionConfig:
    """The constants of the published selection, each with its published default.

    Attributes:
        k: Features kept.
        grid: Cells per side of the grid the Jenks breaks are computed in (where the image
            does not divide evenly, cells differ in size by at most one pixel).
        jenks_classes: Classes of the per-cell Jenks split.
        jenks_break: Index into the ``jenks_classes + 1`` break values (minimum first) used as
            the cell's threshold (the reference's ``breaks[-5]`` with 6 classes).
        percentile: Global percentile of the relevance a pixel must also exceed.
        eps: Initial DBSCAN radius.
        min_samples: Initial DBSCAN ``min_samples``.
        eps_step: Added to ``eps`` at each search step.
        min_samples_step: Added to ``min_samples`` at each search step.
        max_clusters: The search stops once there are at most this many clusters ...
        max_noise: ... and at most this fraction of noise points.
        max_search_steps: Bound on the search (the reference loop had none).
        relevance_weight: The relevance coordinate is ``relevance_weight * W * R / max|R|``.
        colour_weight: The colour coordinates are ``colour_weight * RGB`` with RGB in 0..255.
    """

    k: int = 9
    grid: int = 4
    jenks_classes: int = 6
    jenks_break: int = 2
    percentile: float = 95.0
    eps: float = 12.0
    min_samples: int = 20
    eps_step: float = 1.0
    min_samples_step: int = 2
    max_clusters: int = 7
    max_noise: float = 0.25
    max_search_steps: int = 30
    relevance_weight: float = 2.0
    colour_weight: float = 1.0 / 3.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.type == "int" and not is_integer(value):
                raise ValueError(f"{item.name} must be an int, got {value!r}")
            if item.type == "float" and (
                not isinstance(value, numbers.Real) or not math.isfinite(value)
            ):
                raise ValueError(f"{item.name} must be a finite number, got {value!r}")
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.grid < 1 or self.jenks_classes < 2:
            raise ValueError("grid must be >= 1 and jenks_classes >= 2")
        if not 0 <= self.jenks_break <= self.jenks_classes:
            raise ValueError(
                f"jenks_break must be in 0..{self.jenks_classes}, got {self.jenks_break}"
            )
        if not 0 <= self.percentile <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {self.percentile}")
        if self.eps <= 0 or self.min_samples < 1 or self.max_search_steps < 1:
            raise ValueError("eps must be > 0, min_samples >= 1 and max_search_steps >= 1")
        if self.eps_step < 0 or self.min_samples_step < 0 or self.max_clusters < 0:
            raise ValueError(
                "eps_step, min_samples_step and max_clusters must be >= 0 (the search grows eps "
                f"and min_samples), got {self.eps_step}, {self.min_samples_step} and "
                f"{self.max_clusters}"
            )
        if not 0 <= self.max_noise <= 1:
            raise ValueError(f"max_noise must be in [0, 1], got {self.max_noise}")


@dataclass
class FeatureSelection:
    """Everything [`select_features`][ctc_plugin.features.selection.select_features] found.

    Attributes:
        mask: The new partition ``(N, 1, H, W)``: ids ``0..k-1`` are the selected features in
            rank order, id ``k`` (when present) the merged remainder.
        selected: Per image, the input feature ids kept, best first.
        feature_ids: Per image, the input feature ids scored.
        scores: Per image, the cluster agreement of each feature in ``feature_ids``.
        relevance: The heatmap used, ``(N, H, W)``.
        clusters: Per image, DBSCAN cluster labels ``(H, W)`` (``-1``: not clustered).
        converged: Per image, whether the bounded DBSCAN search met its stopping rule.
    """

    mask: torch.Tensor
    selected: list[np.ndarray]
    feature_ids: list[np.ndarray]
    scores: list[np.ndarray]
    relevance: torch.Tensor
    clusters: list[np.ndarray]
    converged: list[bool]


def relevant_pixels(relevance: np.ndarray, config: SelectionConfig) -> np.ndarray:
    """Return the boolean ``(H, W)`` map of pixels above the cell's Jenks break and the percentile.

    A cell with fewer distinct values than ``jenks_classes`` has no natural breaks; there only the
    global percentile applies. Relevance is compared with its signs, as the breaks and the
    percentile are computed: a signed heatmap (Integrated Gradients, LRP with beta > 0) keeps
    its strongest positive evidence, not its strongest negative evidence; on the published
    LRP-alpha1-beta0 heatmaps, which are never negative, this is the same.
    """
    height, width = relevance.shape
    global_threshold = np.percentile(relevance, config.percentile)
    # grid x grid cells whose sizes differ by at most one pixel (as GridSegmenter's)
    rows = np.arange(config.grid + 1) * height // config.grid
    cols = np.arange(config.grid + 1) * width // config.grid
    keep = relevance > global_threshold
    for top, bottom in zip(rows[:-1], rows[1:]):
        for left, right in zip(cols[:-1], cols[1:]):
            cell = relevance[top:bottom, left:right]
            if np.unique(cell).size < config.jenks_classes:
                continue
            breaks = jenkspy.jenks_breaks(cell.ravel().astype(np.float64), config.jenks_classes)
            cut = breaks[config.jenks_break]
            keep[top:bottom, left:right] &= cell > cut
    return keep


def cluster_relevant_pixels(
    keep: np.ndarray, relevance: np.ndarray, rgb: np.ndarray, config: SelectionConfig
) -> tuple[np.ndarray, bool]:
    """Cluster the kept pixels with DBSCAN and the published, now bounded, parameter search.

    Args:
        keep: Boolean ``(H, W)`` map of the pixels to cluster.
        relevance: Heatmap ``(H, W)``.
        rgb: Colours ``(H, W, 3)`` in ``[0, 1]``.
        config: The selection constants.

    Returns:
        Cluster labels ``(H, W)`` (``-1`` for unclustered pixels) and whether the search met its
        stopping rule.
    """
    labels = np.full(keep.shape, -1, dtype=np.int64)
    rows, cols = np.nonzero(keep)
    if rows.size == 0:
        return labels, True
    scale = np.abs(relevance).max()
    scaled = relevance[rows, cols] / scale if scale > 0 else np.zeros(rows.size)
    width = keep.shape[1]
    points = np.column_stack(
        [
            cols.astype(np.float64),
            rows.astype(np.float64),
            config.relevance_weight * width * scaled,
            config.colour_weight * 255.0 * rgb[rows, cols],
        ]
    )
    eps, min_samples = config.eps, config.min_samples
    converged = False
    found = np.full(rows.size, -1)
    for _ in range(config.max_search_steps):
        found = DBSCAN(eps=eps, min_samples=min_samples).fit(points).labels_
        clusters = found.max() + 1
        noise = np.count_nonzero(found < 0) / found.size
        if clusters <= config.max_clusters and noise <= config.max_noise:
            converged = True
            break
        eps += config.eps_step
        min_samples += config.min_samples_step
    labels[rows, cols] = found
    return labels, converged


def cluster_agreement(partition: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Score each feature S by ``max_C (|S & C| / |S| + |S & C| / |C|) / 2``.

    Args:
        partition: Contiguous label map ``(H, W)`` with ids ``0..K-1``.
        clusters: Cluster labels ``(H, W)``, ``-1`` for pixels in no cluster.

    Returns:
        Scores ``(K,)`` in ``[0, 1]`` (0 for every feature when there is no cluster).
    """
    count = int(partition.max()) + 1
    n_clusters = int(clusters.max()) + 1
    if n_clusters <= 0:
        return np.zeros(count)
    inside = clusters >= 0
    joint = np.bincount(
        partition[inside] * n_clusters + clusters[inside], minlength=count * n_clusters
    ).reshape(count, n_clusters)
    feature_area = np.bincount(partition.ravel(), minlength=count)[:, None]
    cluster_area = joint.sum(axis=0, keepdims=True)
    agreement = 0.5 * (joint / np.maximum(feature_area, 1) + joint / np.maximum(cluster_area, 1))
    return agreement.max(axis=1)


def _as_label_maps(feature_mask: torch.Tensor, n: int, shape: tuple[int, int]) -> torch.Tensor:
    if (
        not isinstance(feature_mask, torch.Tensor)
        or feature_mask.is_floating_point()
        or feature_mask.dtype == torch.bool
    ):
        raise TypeError(
            "feature_mask must be an integer tensor of feature ids; convert other mask forms "
            "(boolean masks, a stack of one image's masks, SAM's dicts) with "
            "ctc_plugin.features.as_feature_mask"
        )
    mask = feature_mask
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1 or tuple(mask.shape[2:]) != shape:
        raise ValueError(
            f"feature_mask of shape {tuple(feature_mask.shape)} does not fit images of size "
            f"{shape}: "
            "expected (H, W), (N, H, W), (N, 1, H, W) or (1, 1, H, W)"
        )
    if mask.shape[0] == 1 and n > 1:
        mask = mask.expand(n, -1, -1, -1)
    if mask.shape[0] != n:
        raise ValueError(
            f"feature_mask has {counted(mask.shape[0], 'mask')} for {counted(n, 'image')}"
        )
    return mask[:, 0].cpu()


def _colour_view(
    images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[torch.Tensor, tuple[float, ...] | None, tuple[float, ...] | None]:
    """The RGB images the colour coordinates are read from, with their normalisation.

    A grayscale batch is read as the RGB images of its channel repeated (its normalisation may
    give one value or three); the model still gets the one channel.
    """
    mean = None if mean is None else tuple(mean)
    std = None if std is None else tuple(std)
    channels = images.shape[1]
    if channels == 1:
        mean = mean * 3 if mean is not None and len(mean) == 1 else mean
        std = std * 3 if std is not None and len(std) == 1 else std
        return images.expand(-1, 3, -1, -1), mean, std
    if channels != 3:
        raise ValueError(
            f"select_features reads colours from RGB (or grayscale) images, and these have "
            f"{channels} channels: compute the relevance on your images and pass it with an RGB "
            "view of them, e.g. select_features(mask, x[:, :3], relevance=heatmap) for RGBA "
            "images, where heatmap is (N, H, W) (a Captum or Zennit attribution of x)"
        )
    return images, mean, std


@moved_keywords(
    config=(SelectionConfig, "config"),
    hints={
        "return_details": "select_features always returns a FeatureSelection now; its .mask is "
        "the new partition",
    },
)
def select_features(
    feature_mask: torch.Tensor,
    images: torch.Tensor,
    relevance: torch.Tensor | RelevanceMethod | None = None,
    *,
    config: SelectionConfig = SelectionConfig(),
    model: torch.nn.Module | None = None,
    target: int | Sequence[int] | torch.Tensor | None = None,
    value_range: tuple[float, float] | Literal["auto"] = (0.0, 1.0),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> FeatureSelection:
    """Keep the ``config.k`` features that agree best with the relevant pixel clusters.

    The published constants (``k``, the Jenks grid, the percentile, the DBSCAN search, the
    coordinate weights) are the fields of one
    [`SelectionConfig`][ctc_plugin.features.selection.SelectionConfig], as Zennit's composites
    take rule objects: build one with the values to change, or derive one with
    ``dataclasses.replace``.

    Examples:
        >>> import dataclasses
        >>> from ctc_plugin.features import SelectionConfig
        >>> config = SelectionConfig(k=3, eps=8.0)
        >>> dataclasses.replace(config, max_search_steps=60).k
        3

    Args:
        feature_mask: Integer partition ``(N, 1, H, W)`` (or ``(1, 1, H, W)``, ``(N, H, W)``,
            ``(H, W)``), e.g. from [`to_partition`][ctc_plugin.features.partition.to_partition] or a
            segmenter.
        images: The classifier's input batch ``(N, 3, H, W)``, or ``(N, 1, H, W)`` for a
            grayscale classifier (the colour coordinates read it as its channel repeated; the
            model gets the one channel). For other channel counts pass an RGB view of the
            images with the relevance computed on the images themselves.
        relevance: A heatmap tensor (``(N, H, W)``, ``(N, 1, H, W)`` or ``(N, C, H, W)``), or the
            method to compute one: ``None`` for LRP-alpha1-beta0 through Zennit, a Zennit
            composite, a Captum attribution object, or a callable ``(images, target) -> Tensor``.
        config: The selection constants (default: the published ones).
        model: The classifier (needed unless ``relevance`` is a tensor or a Captum object).
        target: Class per image, one class for all, or ``None`` for the predicted class.
        value_range: Range of the (un-normalised) image values, for the colour coordinates.
        mean: Per-channel mean the images were normalised with, if any (one value or three for
            grayscale images).
        std: Per-channel standard deviation the images were normalised with, if any.

    Returns:
        A [`FeatureSelection`][ctc_plugin.features.selection.FeatureSelection]. Its ``mask`` is
        the new partition ``LongTensor`` ``(N, 1, H, W)`` (Captum's ``feature_mask``): the
        selected features get ids ``0..k-1`` best first, everything else is merged into id
        ``k``. With fewer than ``k + 1`` features, every feature is kept (re-numbered by rank)
        and there is no remainder.

    Raises:
        TypeError: If ``config`` is not a ``SelectionConfig``, or for a keyword argument this
            function no longer takes (``k=``, ``eps=``, ... are fields of the config;
            ``return_details=`` is gone, the details are always returned).
        ValueError: A mask or heatmap that does not fit the images, images outside the declared
            value range, images of neither 1 nor 3 channels, or a heatmap with NaN or infinite
            values.
    """
    if not isinstance(config, SelectionConfig):
        raise TypeError(
            f"config must be a SelectionConfig, got {type(config).__name__}; build one with "
            "SelectionConfig(k=..., eps=...)"
        )
    k = config.k
    colour_images, mean, std = _colour_view(check_images(images), mean, std)
    normalisation = ImageNormalisation(
        value_range=value_range if value_range == "auto" else tuple(value_range),
        mean=mean,
        std=std,
    )
    rgb = normalisation.to_unit(colour_images).permute(0, 2, 3, 1).cpu().numpy()
    rgb = rgb.astype(np.float64)
    n, _, height, width = images.shape
    labels = _as_label_maps(feature_mask, n, (height, width))
    if isinstance(relevance, torch.Tensor):
        heatmap = as_heatmap(relevance, images)
    else:
        heatmap = relevance_heatmap(relevance, model, images, target)
    heatmap_np = heatmap.cpu().numpy().astype(np.float64)
    finite = np.isfinite(heatmap_np).reshape(n, -1)
    if not finite.all():
        first = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise ValueError(
            f"the relevance heatmap holds {int((~finite).sum())} NaN or infinite values (first "
            f"in image {first}); thresholds and clusters of it are undefined: pass a finite "
            "heatmap, or a relevance method that gives one for these images and this model"
        )

    masks, selected_all, ids_all, scores_all, clusters_all, converged_all = [], [], [], [], [], []
    for index in range(n):
        ids, inverse = torch.unique(labels[index], return_inverse=True)
        partition = inverse.numpy()
        keep = relevant_pixels(heatmap_np[index], config)
        clusters, converged = cluster_relevant_pixels(keep, heatmap_np[index], rgb[index], config)
        if not converged:
            warnings.warn(
                f"image {index}: the DBSCAN search did not reach <= {config.max_clusters} "
                f"clusters and <= {config.max_noise:.0%} noise within {config.max_search_steps} "
                "steps; using the last step (raise SelectionConfig.max_search_steps or change "
                "its eps/min_samples)",
                RuntimeWarning,
                stacklevel=caller_stacklevel(),
            )
        agreement = cluster_agreement(partition, clusters)
        area = np.bincount(partition.ravel(), minlength=len(ids))
        mean_relevance = np.bincount(
            partition.ravel(), weights=heatmap_np[index].ravel(), minlength=len(ids)
        ) / np.maximum(area, 1)
        order = np.lexsort((np.arange(len(ids)), -mean_relevance, -agreement))
        new_ids = np.empty(len(ids), dtype=np.int64)
        new_ids[order] = np.minimum(np.arange(len(ids)), k)
        masks.append(torch.from_numpy(new_ids[partition]))
        selected_all.append(ids.numpy()[order[:k]])
        ids_all.append(ids.numpy())
        scores_all.append(agreement)
        clusters_all.append(clusters)
        converged_all.append(converged)
    mask = torch.stack(masks)[:, None].to(feature_mask.device)
    return FeatureSelection(
        mask=mask,
        selected=selected_all,
        feature_ids=ids_all,
        scores=scores_all,
        relevance=heatmap,
        clusters=clusters_all,
        converged=converged_all,
    )
