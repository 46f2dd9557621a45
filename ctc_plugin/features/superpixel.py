"""Offline segmenters: scikit-image superpixels and a regular grid.

Neither needs a checkpoint or a network connection.
[`SuperpixelSegmenter`][ctc_plugin.features.superpixel.SuperpixelSegmenter] with its defaults is
the segmenter `CTC` uses when it is given neither a ``feature_mask`` nor a segmenter; the
defaults give 10 to 30 segments (mostly 15 to 25) on 96 x 96 and 224 x 224 natural images.
"""

from __future__ import annotations

import heapq
import inspect
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from skimage import color, filters, graph, segmentation

from ctc_plugin.features.base import FeatureTable, Segmentation, Segmenter, feature_table
from ctc_plugin.features.cache import MaskCache
from ctc_plugin.features.partition import to_partition
from ctc_plugin.inputs import check_images, is_integer

__all__ = ["GridSegmenter", "SuperpixelSegmenter"]

SuperpixelMethod = Literal["slic", "felzenszwalb", "quickshift", "watershed"]

_METHODS: tuple[str, ...] = ("slic", "felzenszwalb", "quickshift", "watershed")


def _method_parameters(method: str) -> set[str]:
    """The keyword options ``skimage.segmentation.<method>`` takes (the image aside).

    Each method is the scikit-image function of its name; ``method_options`` are its keywords.
    """
    parameters = inspect.signature(getattr(segmentation, method)).parameters
    return {name for name in list(parameters)[1:] if name not in ("channel_axis", "start_label")}


def _method_defaults(method: str, n_segments: int) -> dict[str, Any]:
    """Per-method options tuned for about ``n_segments`` segments on small images."""
    if method == "slic":
        return {"n_segments": n_segments, "compactness": 30.0, "sigma": 1.0}
    if method == "felzenszwalb":
        return {"scale": 300.0, "sigma": 0.8}
    if method == "quickshift":  # kernel_size and max_dist follow the image size (see below)
        return {"ratio": 0.5}
    return {"markers": n_segments, "compactness": 0.001}


def _add_border_lengths(rag: graph.RAG, src: int, dst: int, neighbour: int) -> dict[str, int]:
    """The border a merged segment shares with ``neighbour``: the two borders together."""
    return {
        "count": sum(
            rag.edges[node, neighbour]["count"]
            for node in (src, dst)
            if rag.has_edge(node, neighbour)
        )
    }


def _merge_small_segments(labels: np.ndarray, min_pixels: float) -> np.ndarray:
    """Merge each segment smaller than ``min_pixels`` into a neighbour, smallest first.

    The smallest segment under ``min_pixels`` joins the adjacent segment (4-connected) with which
    it shares the longest border (ties: the lowest id); the union keeps that neighbour's id and,
    if still too small, waits its turn again. It goes on until every segment has at least
    ``min_pixels`` pixels or one segment is left. The adjacency and border lengths come from
    scikit-image's region adjacency graph (``skimage.graph.rag_boundary``).

    Args:
        labels: Integer label map ``(H, W)`` with non-negative ids.
        min_pixels: The smallest area kept as it is, in pixels.

    Returns:
        The label map with every merged segment carrying the id of the one it joined.
    """
    ids, counts = np.unique(labels, return_counts=True)
    areas = dict(zip(ids.tolist(), counts.tolist()))
    if len(areas) < 2 or counts.min() >= min_pixels:
        return labels
    # only the border lengths ("count") are used, not the mean edge value along each border
    rag = graph.rag_boundary(labels, np.zeros(labels.shape), connectivity=1)
    waiting = [(area, node) for node, area in areas.items() if area < min_pixels]
    heapq.heapify(waiting)
    while waiting and len(areas) > 1:
        area, node = heapq.heappop(waiting)
        if areas.get(node) != area:  # merged away, or grown since it was queued
            continue
        into = max(rag.neighbors(node), key=lambda n: (rag.edges[node, n]["count"], -n))
        rag.merge_nodes(node, into, weight_func=_add_border_lengths)
        areas[into] += areas.pop(node)
        if areas[into] < min_pixels:
            heapq.heappush(waiting, (areas[into], into))
    lookup = np.arange(int(ids.max()) + 1)
    for node in rag.nodes:
        lookup[rag.nodes[node]["labels"]] = node
    return lookup[labels]


class SuperpixelSegmenter(Segmenter):
    """Superpixels from scikit-image as features.

    Args:
        method: ``"slic"`` (default), ``"felzenszwalb"``, ``"quickshift"`` or ``"watershed"``
            (compact watershed on the Sobel gradient of the grey image).
        n_segments: Target number of segments (used by ``slic`` and ``watershed``; the other
            methods are steered by their own options).
        min_area: Segments smaller than this (fraction of the image when below 1, else pixels)
            are merged into a neighbour: the smallest first, into the adjacent segment it
            shares the longest border with, again and again until every segment has at least
            ``min_area`` (or one segment is left). ``felzenszwalb`` defaults its ``min_size``
            to the same area. ``None`` (default): 0.5% of the image, or a quarter of the mean
            area of ``n_segments`` segments where that is smaller (above 50 segments), so that
            asking for many segments gives many, not a few remainders.
        value_range: Range of the (un-normalised) pixel values, or ``"auto"``.
        mean: Per-channel mean the images were normalised with, if any.
        std: Per-channel standard deviation the images were normalised with, if any.
        cache: See [`Segmenter`][ctc_plugin.features.base.Segmenter]; off by default (superpixels
            are cheap).
        **method_options: Passed to the scikit-image function (override the defaults).

    Raises:
        ValueError: When built, for an unknown method, an ``n_segments`` that is not an
            integer of at least 1, a negative ``min_area``, a ``value_range`` that is neither
            two finite numbers ``(low, high)`` nor ``"auto"``, or a ``mean``/``std`` that is not
            three finite numbers.
        TypeError: When built, for an option the method's scikit-image function does not take.

    Examples:
        >>> import torch
        >>> segmenter = SuperpixelSegmenter()
        >>> mask = segmenter(torch.rand(2, 3, 96, 96))
        >>> mask.shape, mask.dtype
        (torch.Size([2, 1, 96, 96]), torch.int64)
    """

    result_libraries = ("scikit-image",)

    def __init__(
        self,
        method: SuperpixelMethod = "slic",
        n_segments: int = 25,
        *,
        min_area: float | None = None,
        value_range: tuple[float, float] | Literal["auto"] = (0.0, 1.0),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        cache: MaskCache | str | bool | None = None,
        **method_options: Any,
    ) -> None:
        super().__init__(value_range=value_range, mean=mean, std=std, cache=cache)
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        if not is_integer(n_segments) or n_segments < 1:
            raise ValueError(f"n_segments must be an integer of at least 1, got {n_segments!r}")
        if min_area is not None and not (isinstance(min_area, numbers.Real) and min_area >= 0):
            raise ValueError(f"min_area must be non-negative (a number), got {min_area!r}")
        unknown = sorted(set(method_options) - _method_parameters(method))
        if unknown:
            raise TypeError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for "
                f"method={method!r}: skimage.segmentation.{method} takes "
                f"{', '.join(sorted(_method_parameters(method)))}"
            )
        self.method = method
        self.n_segments = int(n_segments)
        self.min_area = min(0.005, 0.25 / self.n_segments) if min_area is None else float(min_area)
        self.method_options = {**_method_defaults(method, self.n_segments), **method_options}

    def __repr__(self) -> str:
        return f"SuperpixelSegmenter(method={self.method!r}, n_segments={self.n_segments})"

    def settings(self) -> dict[str, Any]:
        """Return every option that changes the result.

        ``"version"`` counts changes of the code's result at the same options, so that a mask
        cache never serves masks of an earlier version (2: small superpixels merged into
        neighbours instead of dropped).
        """
        return {
            "method": self.method,
            "min_area": self.min_area,
            "options": self.method_options,
            "version": 2,
        }

    def _raw_labels(self, image: np.ndarray) -> np.ndarray:
        options = self.method_options
        if self.method == "slic":
            return segmentation.slic(image, start_label=0, channel_axis=-1, **options)
        if self.method == "felzenszwalb":
            area = self.min_area * image.shape[0] * image.shape[1]
            options = {"min_size": int(area if self.min_area < 1 else self.min_area), **options}
            return segmentation.felzenszwalb(image, channel_axis=-1, **options)
        if self.method == "quickshift":
            kernel = max(3.0, max(image.shape[:2]) / 45)  # 3 at 96 px, 5 at 224 px
            options = {"kernel_size": kernel, "max_dist": 8 * kernel, **options}
            return segmentation.quickshift(image, channel_axis=-1, **options)
        gradient = filters.sobel(color.rgb2gray(image))
        return segmentation.watershed(gradient, **options)

    def segment_image(self, image: np.ndarray) -> tuple[np.ndarray, FeatureTable]:
        """Segment one RGB ``uint8`` image ``(H, W, 3)``."""
        raw = self._raw_labels(image)
        min_pixels = self.min_area * raw.size if self.min_area < 1 else self.min_area
        merged = _merge_small_segments(raw, min_pixels)
        kept = np.unique(merged)  # each the id of a raw superpixel (with those merged into it)
        labels, sources = to_partition(
            merged[None] == kept[:, None, None],
            shape=raw.shape,
            dilation=0,
            min_area=0,
            return_sources=True,
        )
        return labels.numpy(), feature_table(labels.numpy(), source=kept[sources])


class GridSegmenter(Segmenter):
    """A regular grid of rectangular cells as features (the simplest offline baseline).

    The grid depends only on the image shape, never on the pixel values: any float or integer
    batch ``(N, C, H, W)`` with any number of channels and any value range (normalised images,
    ``[0, 255]``, the slightly out-of-range noisy copies Quantus makes, even NaN) gets the same
    cells. That makes it the segmenter to use when the inputs' normalisation is unknown.

    Args:
        cells: Number of cells per side, or ``(rows, columns)``. Cells differ in size by at most
            one pixel when the image does not divide evenly.
        value_range: Accepted for the same signature as the other segmenters; ignored.
        mean: Accepted for the same signature as the other segmenters; ignored.
        std: Accepted for the same signature as the other segmenters; ignored.
        cache: Accepted for the same signature as the other segmenters; ignored (a grid costs
            less to make than to look up).

    Raises:
        ValueError: ``cells`` neither a positive int nor a pair of them (at construction); at
            call time a batch that is not ``(N, C, H, W)``, an empty batch, or a grid finer
            than the image.
    """

    def __init__(
        self,
        cells: int | tuple[int, int] = 4,
        *,
        value_range: tuple[float, float] | Literal["auto"] = (0.0, 1.0),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        cache: Any = None,
    ) -> None:
        super().__init__(value_range=value_range, mean=mean, std=std, cache=None)
        pair = (cells, cells) if isinstance(cells, numbers.Integral) else cells
        counts = tuple(pair) if isinstance(pair, Sequence) else ()
        if len(counts) != 2 or not all(is_integer(c) and c >= 1 for c in counts):
            raise ValueError(
                f"cells must be a positive int or a pair (rows, columns) of them, got {cells!r}"
            )
        self.cells = (int(counts[0]), int(counts[1]))

    def __repr__(self) -> str:
        return f"GridSegmenter(cells={self.cells})"

    def settings(self) -> dict[str, Any]:
        """Return every option that changes the result."""
        return {"cells": self.cells}

    def grid(self, height: int, width: int) -> np.ndarray:
        """The label map ``(height, width)`` of the grid (row-major ids ``0..rows*cols-1``).

        Raises:
            ValueError: If the grid has more rows or columns than the image has pixels.
        """
        rows, cols = self.cells
        if rows > height or cols > width:
            raise ValueError(f"a {rows}x{cols} grid does not fit a {height}x{width} image")
        row_ids = np.arange(height) * rows // height
        col_ids = np.arange(width) * cols // width
        return row_ids[:, None] * cols + col_ids[None, :]

    def segment_image(self, image: np.ndarray) -> tuple[np.ndarray, FeatureTable]:
        """Cut one image ``(H, W, ...)`` into the grid (row-major ids); only its shape is read."""
        labels = self.grid(*image.shape[:2])
        return labels, feature_table(labels)

    def segment(self, images: torch.Tensor) -> Segmentation:
        """The grid for a batch ``(N, C, H, W)``; the pixel values are not read.

        Raises:
            TypeError: If ``images`` is not a tensor.
            ValueError: A batch that is not 4-dimensional, an empty batch, or a grid finer than
                the image.
        """
        check_images(images, floating=False, finite=False)  # the values are not read
        count, _, height, width = images.shape
        labels = self.grid(int(height), int(width))
        mask = torch.from_numpy(labels.astype(np.int64)).to(images.device)
        mask = mask.expand(count, 1, height, width).clone()
        return Segmentation(mask=mask, features=[feature_table(labels) for _ in range(count)])
