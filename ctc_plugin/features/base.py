"""The segmenter protocol, the declared image normalisation and per-feature metadata.

Every segmenter in ctc-plugin follows one small protocol:

* ``segmenter(images)`` takes a float batch ``(N, 3, H, W)`` and returns a ``LongTensor``
  ``(N, 1, H, W)`` of feature ids, usable as Captum's ``feature_mask``;
* ``segmenter.segment(images)`` returns the same mask plus a
  [`FeatureTable`][ctc_plugin.features.base.FeatureTable] per image (area, bounding box, source
  mask index and any scores the segmenter has).

Segmenters see images the way the classifier does, so they must be told how the pixel values map
to colours: [`ImageNormalisation`][ctc_plugin.features.base.ImageNormalisation] (a
``value_range`` and optionally the ``mean``/``std`` used to normalise the images). Out-of-range
values are an error, never silently clipped.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import numbers
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from ctc_plugin.features.cache import MaskCache, resolve_cache
from ctc_plugin.inputs import check_images, is_finite_number

__all__ = [
    "FeatureTable",
    "ImageNormalisation",
    "Segmentation",
    "Segmenter",
    "SegmenterProtocol",
    "feature_table",
]

_RANGE_TOLERANCE = 1e-3
#: Images whose values lie within this fraction of the declared range, at its low end, are
#: warned about: in 8 bits they are at most three levels (images in [0, 1] declared as (0, 255)
#: are black).
_SLIVER = 2 / 255
#: Values at most this fraction of the range past it overshoot it (bicubic resizing, noise):
#: the advice is to clamp them, not to declare another range.
_OVERSHOOT = 0.25


@runtime_checkable
class SegmenterProtocol(Protocol):
    """What `CTC` needs from a segmenter: a callable from images to a feature mask."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Return a ``LongTensor`` ``(N, 1, H, W)`` of feature ids for images ``(N, 3, H, W)``."""
        ...


def _plain_numbers(values: Any) -> Any:
    """A sequence, array or tensor of numbers as a tuple of floats; anything else as it is."""
    if isinstance(values, torch.Tensor | np.ndarray):
        values = values.tolist()
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        return values
    return tuple(
        float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else v for v in values
    )


def _finite_numbers(values: Any, count: int) -> bool:
    """Whether ``values`` is a tuple of ``count`` finite real numbers (not bools)."""
    return (
        isinstance(values, tuple)
        and len(values) == count
        and all(is_finite_number(v) for v in values)
    )


class ValueRangeError(ValueError):
    """Images whose values leave the range a segmenter was told they lie in.

    Attributes:
        overshoot: Whether they leave it only a little (as bicubic resizing leaves [0, 1]
            images), where the advice is to clamp them, not to declare another range.
    """

    overshoot: bool = False


class ValueRangeWarning(UserWarning):
    """Images that vary within a sliver of their declared range: the segmenter sees them flat."""


@dataclass(frozen=True)
class ImageNormalisation:
    """How a float image batch maps to RGB colours.

    The images are first un-normalised with ``x * std + mean`` (per channel) when ``mean`` and
    ``std`` are given, and the result is expected to lie in ``value_range``. With
    ``value_range="auto"`` each image is min-max scaled instead (use it only when the scale is
    truly unknown: colours then depend on the image's own extremes).

    Args:
        value_range: ``(low, high)`` of the (un-normalised) pixel values, or ``"auto"``.
        mean: Per-channel mean that was subtracted from the images, e.g. ImageNet's
            ``(0.485, 0.456, 0.406)``.
        std: Per-channel standard deviation the images were divided by.
    """

    value_range: tuple[float, float] | Literal["auto"] = (0.0, 1.0)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean= and std= (the normalisation applied), or neither")
        if self.value_range != "auto":
            if isinstance(self.value_range, str) or not _finite_numbers(self.value_range, 2):
                raise ValueError(
                    f"value_range must be (low, high), two finite numbers, or 'auto'; got "
                    f"{self.value_range!r}"
                )
            low, high = self.value_range
            if not high > low:
                raise ValueError(
                    f"value_range must be (low, high) with high > low, got {self.value_range}"
                )
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and not _finite_numbers(values, 3):
                raise ValueError(
                    f"{name} must be three finite numbers, one per RGB channel, got {values!r}"
                )
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """Map a float batch ``(N, 3, H, W)`` to RGB in ``[0, 1]``.

        Raises:
            TypeError: If ``images`` is not a tensor.
            ValueError: If the images are not a finite float batch ``(N, 3, H, W)``, or their
                values fall outside the declared range (the message says which option to set).

        Warns:
            ValueRangeWarning: If the batch is not flat but its values lie within the lowest
                2/255 of a declared range wider than [0, 1] (in 8 bits, at most three levels:
                images in [0, 1] declared as ``(0, 255)``). A nearly uniform photo whose values
                sit elsewhere in the range, or in the default ``(0, 1)``, is not warned about:
                no declaration would change how it looks.
        """
        check_images(images, channels=3)
        x = images.detach().to(torch.float32)
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = x * std + mean
        if self.value_range == "auto":
            low = x.amin(dim=(1, 2, 3), keepdim=True)
            high = x.amax(dim=(1, 2, 3), keepdim=True)
            return ((x - low) / (high - low).clamp_min(1e-12)).clamp(0.0, 1.0)
        low, high = self.value_range
        span = high - low
        found_low, found_high = float(x.min()), float(x.max())
        if found_low < low - _RANGE_TOLERANCE * span or found_high > high + _RANGE_TOLERANCE * span:
            overshoot = (
                found_low >= low - _OVERSHOOT * span and found_high <= high + _OVERSHOOT * span
            )
            if overshoot:
                advice = (  # a wider range would darken them: (0, 255) makes [0, 1] black
                    "they overshoot it a little, as images resized with bicubic interpolation "
                    f"or given noise do: clamp them (x.clamp({low:g}, {high:g})"
                    + (
                        "); if they were normalised, declare it (mean=/std=)"
                        if self.mean is None
                        else " before normalising them)"
                    )
                )
            else:
                advice = (
                    "declare how the images were normalised (value_range=(0, 255), "
                    "mean=/std= for normalised inputs, or value_range='auto')"
                )
            error = ValueRangeError(
                f"image values lie in [{found_low:.3g}, {found_high:.3g}] but the segmenter "
                f"was told value_range={self.value_range}"
                + ("" if self.mean is None else f" after undoing mean={self.mean}, std={self.std}")
                + f"; {advice}"
            )
            error.overshoot = overshoot
            raise error
        # at the low end of a range wider than [0, 1] (where images in [0, 1] land when the
        # range is declared too wide), not any nearly uniform image (a grey sky is one)
        if found_low < found_high <= low + _SLIVER * span and span > 1:
            warnings.warn(
                ValueRangeWarning(
                    f"image values lie in [{found_low:.3g}, {found_high:.3g}], "
                    f"{(found_high - found_low) / span:.2%} of value_range={self.value_range}: "
                    "the segmenter sees them as at most three of 256 levels, a nearly flat "
                    "image. Declare the range they were scaled to (value_range=(0, 1) for "
                    "images in [0, 1])"
                ),
                stacklevel=2,
            )
        return ((x - low) / span).clamp(0.0, 1.0)

    def to_uint8(self, images: torch.Tensor) -> np.ndarray:
        """Map a float batch ``(N, 3, H, W)`` to RGB ``uint8`` images ``(N, H, W, 3)``."""
        unit = self.to_unit(images)
        return (unit * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def settings(self) -> dict[str, Any]:
        """Return the options as plain JSON-able values (part of cache keys)."""
        return {"value_range": self.value_range, "mean": self.mean, "std": self.std}


@dataclass
class FeatureTable:
    """Per-feature metadata of one image's partition (row ``k`` describes feature id ``k``).

    Attributes:
        area: Pixels per feature, ``(K,)`` int64.
        bbox: Bounding boxes ``(K, 4)`` as ``x, y, width, height`` (SAM's convention), int64.
        source: Index of the segmenter's raw mask each feature came from, ``(K,)`` int64;
            ``-1`` for features made from the uncovered remainder.
        scores: Extra per-feature numbers, e.g. SAM's ``predicted_iou`` and ``stability_score``
            (``NaN`` for remainder features).
    """

    area: np.ndarray
    bbox: np.ndarray
    source: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.area.shape[0])

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Flatten to named arrays (for ``.npz`` files)."""
        arrays = {f"{prefix}area": self.area, f"{prefix}bbox": self.bbox}
        arrays[f"{prefix}source"] = self.source
        arrays.update({f"{prefix}score_{name}": value for name, value in self.scores.items()})
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "") -> FeatureTable:
        """Rebuild a table from the arrays ``to_arrays`` wrote."""
        score_prefix = f"{prefix}score_"
        scores = {
            name[len(score_prefix) :]: np.asarray(value)
            for name, value in arrays.items()
            if name.startswith(score_prefix)
        }
        return cls(
            area=np.asarray(arrays[f"{prefix}area"], dtype=np.int64),
            bbox=np.asarray(arrays[f"{prefix}bbox"], dtype=np.int64).reshape(-1, 4),
            source=np.asarray(arrays[f"{prefix}source"], dtype=np.int64),
            scores=scores,
        )


def feature_table(
    labels: np.ndarray,
    source: Sequence[int] | np.ndarray | None = None,
    scores: Mapping[str, Sequence[float] | np.ndarray] | None = None,
) -> FeatureTable:
    """Compute area and bounding boxes of a contiguous label map ``(H, W)`` with ids ``0..K-1``.

    Args:
        labels: Integer label map with contiguous ids from 0.
        source: Source mask index per feature (default: ``0..K-1``).
        scores: Extra per-feature scores, each of length ``K``.
    """
    labels = np.asarray(labels)
    count = int(labels.max()) + 1 if labels.size else 0
    area = np.bincount(labels.ravel(), minlength=count).astype(np.int64)
    bbox = np.zeros((count, 4), dtype=np.int64)
    rows, cols = np.indices(labels.shape)
    flat = labels.ravel()
    for coords, index in ((cols.ravel(), 0), (rows.ravel(), 1)):
        low = np.full(count, np.iinfo(np.int64).max)
        high = np.full(count, -1)
        np.minimum.at(low, flat, coords)
        np.maximum.at(high, flat, coords)
        bbox[:, index] = low
        bbox[:, index + 2] = high - low + 1
    source_array = np.arange(count) if source is None else np.asarray(source, dtype=np.int64)
    score_arrays = {k: np.asarray(v, dtype=np.float64) for k, v in (scores or {}).items()}
    return FeatureTable(area=area, bbox=bbox, source=source_array, scores=score_arrays)


@dataclass
class Segmentation:
    """The result of [`Segmenter.segment`][ctc_plugin.features.base.Segmenter.segment].

    Attributes:
        mask: ``LongTensor`` ``(N, 1, H, W)``; per image, ids are contiguous from 0.
        features: One [`FeatureTable`][ctc_plugin.features.base.FeatureTable] per image.
    """

    mask: torch.Tensor
    features: list[FeatureTable]


def _setting_text(value: Any) -> str:
    """A setting JSON cannot hold, as text that changes whenever the setting does.

    Arrays and tensors are named by their shape, dtype and the sha256 of their bytes (their
    ``str`` abbreviates large ones to ``...``, so two masks that differ in the middle would
    share a cache key); anything else by its ``str``.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        digest = hashlib.sha256(data.tobytes()).hexdigest()
        return f"array{list(data.shape)} {data.dtype} sha256:{digest}"
    return str(value)


@functools.cache
def installed_version(name: str) -> str:
    """The installed version of a distribution, ``"absent"`` if it is not installed.

    ``name`` is a distribution's name (``segment-anything``) or, where the distribution is
    named otherwise (``segment-anything-py``; SAM 2 installed from its clone as ``SAM 2``),
    the name of the package it installs (``segment_anything``, ``sam2``). Read once per
    process (a lookup scans the installed packages' metadata, about 1 ms);
    ``installed_version.cache_clear()`` reads again.
    """
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    package = name.replace("-", "_")
    for distribution in importlib.metadata.packages_distributions().get(package, []):
        try:
            return f"{distribution} {importlib.metadata.version(distribution)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "absent"


class Segmenter(ABC):
    """Base class of the segmenters: normalisation, batching, caching and the protocol.

    Subclasses implement [`segment_image`][ctc_plugin.features.base.Segmenter.segment_image] on one
    RGB ``uint8`` image and [`settings`][ctc_plugin.features.base.Segmenter.settings] (everything
    that changes the result, used in cache keys).

    A cache key (see [`settings_key`][ctc_plugin.features.base.Segmenter.settings_key]) knows a
    subclass by its module and qualified name and its ``settings()``, not by its code: after
    the code of a subclass of your own changes, a cache that holds its masks serves those of the
    old code. Empty the cache then (``segmenter.cache.clear()``), or put a version in
    ``settings()`` (``{"version": 2, ...}``) and raise it with each change that changes the
    masks.

    Args:
        value_range: Range of the (un-normalised) pixel values, or ``"auto"``.
        mean: Per-channel mean the images were normalised with, if any.
        std: Per-channel standard deviation the images were normalised with, if any.
        cache: ``None``/``False`` for no cache, ``True`` for the default location, a folder
            path, or a [`MaskCache`][ctc_plugin.features.cache.MaskCache].
    """

    def __init__(
        self,
        *,
        value_range: tuple[float, float] | Literal["auto"] = (0.0, 1.0),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        cache: MaskCache | str | bool | None = None,
    ) -> None:
        self.normalisation = ImageNormalisation(
            value_range=_plain_numbers(value_range),
            mean=_plain_numbers(mean),
            std=_plain_numbers(std),
        )
        self.cache = resolve_cache(cache)

    @abstractmethod
    def segment_image(self, image: np.ndarray) -> tuple[np.ndarray, FeatureTable]:
        """Segment one RGB ``uint8`` image ``(H, W, 3)`` into a label map and its metadata.

        Returns:
            A contiguous integer label map ``(H, W)`` (ids ``0..K-1``) and its feature table.
        """

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Return every option that changes the result, as JSON-able values."""

    #: The distributions whose versions can change a segmentation (besides ``ctc-plugin`` and
    #: ``numpy``, always counted): their versions are part of the cache key, so that an upgrade
    #: computes the masks again instead of serving the old library's.
    result_libraries: tuple[str, ...] = ()

    def settings_key(self) -> str:
        """Return a stable hash of the class name, settings and library versions.

        The versions are those of ``ctc-plugin``, ``numpy`` and the segmenter's
        ``result_libraries``. The normalisation is not part of it: the cache is keyed by the RGB
        ``uint8`` image the segmenter actually sees. Nor is the subclass's code: a change to it
        that changes the masks needs a changed ``settings()`` (a version entry) or an emptied
        cache.
        """
        payload = {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "settings": self.settings(),
            "versions": {
                name: installed_version(name)
                for name in ("ctc-plugin", "numpy", *self.result_libraries)
            },
        }
        text = json.dumps(payload, sort_keys=True, default=_setting_text)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def segment(self, images: torch.Tensor) -> Segmentation:
        """Segment a batch ``(N, 3, H, W)``: the feature mask plus per-feature metadata.

        Raises:
            TypeError: ``images`` is not a tensor.
            ValueError: Not a finite float batch ``(N, 3, H, W)`` with N >= 1 (the same messages as
                every attribution method, see
                [`ctc_plugin.inputs.check_inputs`][ctc_plugin.inputs.check_inputs]), or values
                outside the declared range.
        """
        check_images(images, channels=3)
        rgb = self.normalisation.to_uint8(images)
        key = self.settings_key() if self.cache is not None else ""
        labels: list[np.ndarray] = []
        tables: list[FeatureTable] = []
        for image in rgb:
            cached = self.cache.load(image, key) if self.cache is not None else None
            if cached is None:
                label_map, table = self.segment_image(image)
                if self.cache is not None:
                    self.cache.store(image, key, label_map, table)
            else:
                label_map, table = cached
            labels.append(label_map)
            tables.append(table)
        mask = torch.from_numpy(np.stack(labels).astype(np.int64)).unsqueeze(1)
        return Segmentation(mask=mask.to(images.device), features=tables)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Return the feature mask ``LongTensor`` ``(N, 1, H, W)`` for ``images``."""
        return self.segment(images).mask
