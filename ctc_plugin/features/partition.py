"""Overlapping masks to a partition, and user masks in every common form to a feature mask.

[`to_partition`][ctc_plugin.features.partition.to_partition] is the published post-processing of
Segment Anything's masks (see the reference notes, section 1), with the reference's defects removed:

1. masks are sorted by area, largest first (ties broken by content, so the result does not depend
   on the order the masks come in);
2. each mask is dilated once with a ``ceil(W / 100)`` square kernel;
3. finer masks win: each pixel goes to the smallest (dilated) mask covering it, so a parent
   becomes "parent minus children"; features left empty are dropped (the reference kept them);
4. the pixels no mask covers are split into connected components; components of at least
   ``min_area`` (default 0.1 % of the image) become features. Smaller fragments join the nearest
   feature, so that every pixel belongs to exactly one feature (in the reference they belonged to
   none, which a Captum ``feature_mask`` cannot express);
5. ids are contiguous from 0: mask features first (largest mask first), then remainder components.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import relabel_sequential

from ctc_plugin.inputs import is_finite_number, is_integer

__all__ = ["as_feature_mask", "mask_stack", "segment_means", "to_partition"]

MaskInput = (
    np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor] | Sequence[Mapping[str, Any]]
)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def sam_record_mask(record: Mapping[str, Any]) -> np.ndarray:
    """The (H, W) mask of one of SAM's mask records, in any of the generator's output modes.

    ``record["segmentation"]`` as a binary mask (an array or tensor, as it is), an
    uncompressed RLE (segment-anything's ``rle_to_mask``) or a compressed COCO RLE
    (`decode_coco_rle`).

    Raises:
        ValueError: A record without ``"segmentation"``, or a COCO RLE without pycocotools.
    """
    if "segmentation" not in record:
        raise ValueError(
            "a mask given as a dict must have a 'segmentation' entry (SAM's output format)"
        )
    segmentation = record["segmentation"]
    if isinstance(segmentation, Mapping):  # SAM output_mode="uncompressed_rle" or "coco_rle"
        if isinstance(segmentation.get("counts"), str | bytes):
            return decode_coco_rle(segmentation)
        from segment_anything.utils.amg import rle_to_mask

        return rle_to_mask(dict(segmentation))
    return _to_numpy(segmentation)


def decode_coco_rle(segmentation: Mapping[str, Any]) -> np.ndarray:
    """A compressed COCO RLE mask (SAM's ``output_mode="coco_rle"``) as a boolean (H, W) array.

    Decoded by pycocotools, with which SAM encodes such masks (so whoever has them has it).

    Raises:
        ValueError: pycocotools is not installed (saying what to install or use instead).
    """
    try:
        from pycocotools import mask as coco_mask
    except ImportError as error:
        raise ValueError(
            "compressed COCO RLE masks (SAM's output_mode='coco_rle') are decoded by "
            "pycocotools, which is not installed: pip install pycocotools, or run "
            "SamAutomaticMaskGenerator with output_mode='binary_mask' or 'uncompressed_rle'"
        ) from error
    return coco_mask.decode(dict(segmentation)).astype(bool)


def mask_stack(masks: MaskInput, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Convert masks in any supported form to a boolean stack ``(M, H, W)``.

    Accepted: an ``(M, H, W)`` array or tensor (bool or 0/1), a single ``(H, W)`` mask, a list of
    ``(H, W)`` arrays or tensors, or SAM's list of dicts (``"segmentation"`` as a binary mask,
    uncompressed RLE, or compressed COCO RLE, decoded with pycocotools).

    Args:
        masks: The masks.
        shape: ``(H, W)`` to use when ``masks`` is empty.

    Raises:
        ValueError: On masks of different shapes, non-binary values or an empty input without
            ``shape``.
    """
    if isinstance(masks, (np.ndarray, torch.Tensor)):
        array = _to_numpy(masks)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise ValueError(f"a mask stack must be (M, H, W), got shape {array.shape}")
        items = list(array)
    else:
        items = [
            sam_record_mask(item) if isinstance(item, Mapping) else _to_numpy(item)
            for item in masks
        ]
    if not items:
        if shape is None:
            raise ValueError("no masks were given and no shape= to build a partition of")
        return np.zeros((0, *shape), dtype=bool)
    shapes = {item.shape for item in items}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"every mask must be 2-D (H, W) of one shape, got shapes {sorted(shapes)}")
    if shape is not None and next(iter(shapes)) != tuple(shape):
        raise ValueError(
            f"masks have shape {next(iter(shapes))} but shape={tuple(shape)} was given"
        )
    stack = np.stack(items)
    if stack.dtype != bool:
        if not np.isin(stack, (0, 1)).all():
            raise ValueError(
                "masks must be boolean (or 0/1); for an integer label map use as_feature_mask()"
            )
        stack = stack.astype(bool)
    return stack


def _content_order(stack: np.ndarray) -> np.ndarray:
    """Return the painting order: area descending, then packed bits; duplicates: first wins."""
    areas = stack.sum(axis=(1, 2))
    packed = [np.packbits(mask).tobytes() for mask in stack]
    return np.asarray(sorted(range(len(stack)), key=lambda i: (-int(areas[i]), packed[i], -i)), int)


def check_partition_options(dilation: Any, min_area: float, remainder: str) -> None:
    """Refuse options of `to_partition` that it cannot use (segmenters check them when built).

    Raises:
        ValueError: ``dilation`` neither ``"auto"`` nor a non-negative int, a negative
            ``min_area``, or ``remainder`` neither ``"components"`` nor ``"single"``.
    """
    if dilation != "auto" and not (is_integer(dilation) and dilation >= 0):
        raise ValueError(f"dilation must be 'auto' or a non-negative int, got {dilation!r}")
    if remainder not in ("components", "single"):
        raise ValueError(f"remainder must be 'components' or 'single', got {remainder!r}")
    if not (is_finite_number(min_area) and min_area >= 0):
        raise ValueError(
            f"min_area must be a non-negative number (0 keeps every segment), got {min_area!r}"
        )


@overload
def to_partition(
    masks: MaskInput,
    *,
    shape: tuple[int, int] | None = ...,
    dilation: int | Literal["auto"] = ...,
    min_area: float = ...,
    remainder: Literal["components", "single"] = ...,
    return_sources: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def to_partition(
    masks: MaskInput,
    *,
    shape: tuple[int, int] | None = ...,
    dilation: int | Literal["auto"] = ...,
    min_area: float = ...,
    remainder: Literal["components", "single"] = ...,
    return_sources: Literal[True],
) -> tuple[torch.Tensor, np.ndarray]: ...


def to_partition(
    masks: MaskInput,
    *,
    shape: tuple[int, int] | None = None,
    dilation: int | Literal["auto"] = "auto",
    min_area: float = 0.001,
    remainder: Literal["components", "single"] = "components",
    return_sources: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, np.ndarray]:
    """Turn possibly overlapping boolean masks into a partition of the image.

    Args:
        masks: A list of ``(H, W)`` arrays or tensors, an ``(M, H, W)`` stack, or SAM's list of
            dicts. An empty list needs ``shape``.
        shape: ``(H, W)`` of the image (checked against the masks when both are given).
        dilation: Side of the square dilation kernel; ``"auto"`` is the published
            ``ceil(W / 100)``; ``0`` or ``1`` means no dilation.
        min_area: Smallest remainder component kept as its own feature: a fraction of the image
            when below 1 (published default 0.001), else a pixel count. Smaller fragments join
            the nearest feature.
        remainder: ``"components"`` (published) splits the uncovered pixels into connected
            components; ``"single"`` keeps them as one "rest of image" feature.
        return_sources: Also return, per feature, the index of the input mask it came from
            (``-1`` for remainder features).

    Returns:
        A ``LongTensor`` ``(H, W)`` with ids contiguous from 0 (and the sources when asked).

    Raises:
        ValueError: On invalid masks or options.
    """
    check_partition_options(dilation, min_area, remainder)
    stack = mask_stack(masks, shape)
    height, width = stack.shape[1:]
    kernel = math.ceil(width / 100) if dilation == "auto" else int(dilation)
    min_pixels = min_area * height * width if min_area < 1 else min_area

    order = _content_order(stack)
    structure = np.ones((kernel, kernel), dtype=bool) if kernel > 1 else None
    painted = np.full((height, width), -1, dtype=np.int64)
    for index in order:  # largest first, so finer masks painted later win
        mask = stack[index]
        if structure is not None:
            mask = ndimage.binary_dilation(mask, structure=structure)
        painted[mask] = index

    # Mask features in painting order; empty ones (fully covered by finer masks) vanish.
    present = np.zeros(len(stack), dtype=bool)
    present[np.unique(painted[painted >= 0])] = True
    sources = [int(i) for i in order if present[i]]
    labels = np.full((height, width), -1, dtype=np.int64)
    lookup = np.full(len(stack), -1, dtype=np.int64)
    lookup[sources] = np.arange(len(sources))
    covered = painted >= 0
    labels[covered] = lookup[painted[covered]]

    uncovered = ~covered
    if uncovered.any():
        if remainder == "single":
            labels[uncovered] = len(sources)
            sources.append(-1)
        else:
            components, count = ndimage.label(uncovered, structure=np.ones((3, 3), bool))
            sizes = np.bincount(components.ravel(), minlength=count + 1)
            keep = [c for c in range(1, count + 1) if sizes[c] >= min_pixels]
            if not keep and not sources:  # nothing else exists: the largest piece stays
                keep = [int(np.argmax(sizes[1:])) + 1]
            for component in keep:
                labels[components == component] = len(sources)
                sources.append(-1)
            orphans = labels < 0
            if orphans.any():  # small fragments join the nearest feature
                _, (rows, cols) = ndimage.distance_transform_edt(orphans, return_indices=True)
                labels[orphans] = labels[rows[orphans], cols[orphans]]
    result = torch.from_numpy(labels)
    if return_sources:
        return result, np.asarray(sources, dtype=np.int64)
    return result


def as_feature_mask(
    masks: Any, shape: tuple[int, int] | None = None, **options: Any
) -> torch.Tensor:
    """Turn user-supplied masks in any common form into a Captum ``feature_mask``.

    Accepted forms:

    * an integer label map ``(H, W)``, ``(N, H, W)`` or ``(N, 1, H, W)`` (ids are made
      contiguous per image; a label map already is a partition);
    * a boolean stack ``(M, H, W)`` or a list of boolean ``(H, W)`` masks (possibly overlapping);
    * SAM's list of dicts;
    * a Captum ``ImageMaskInput`` (its ``mask_list`` or ``mask``);
    * a list with one of the above per image (an integer ``(H, W)`` array in a list is one
      image's label map, a boolean one a mask; a list mixing the two is refused, and so is a
      list of integer arrays that all hold only 0 and 1 or 0 and 255, see Raises).

    Boolean masks (a stack, a list, SAM's dicts, an ``ImageMaskInput``'s ``mask_list``), disjoint
    or overlapping, go through [`to_partition`][ctc_plugin.features.partition.to_partition] with
    ``options``, the published post-processing: the ids follow the masks' areas, largest first,
    not their order in the list (Captum's ``ImageMaskInput`` numbers ``mask_list[i]`` as feature
    ``i``); each mask is first dilated with a ``ceil(W / 100)`` square kernel (``dilation=0``
    keeps the masks as they are); the pixels no mask covers become features of their own.
    ``to_partition(masks, return_sources=True)`` tells which mask each id came from. A list of
    disjoint boolean masks given to ``CTC.attribute`` as its ``feature_mask`` keeps mask ``i``
    as id ``i``, undilated, and the pixels no mask covers as id ``len(masks)``.

    Args:
        masks: The masks.
        shape: ``(H, W)`` of the images (checked when given).
        **options: Passed to ``to_partition`` (``dilation``, ``min_area``, ``remainder``).

    Returns:
        A ``LongTensor`` ``(N, 1, H, W)``.

    Raises:
        ValueError: Masks that are not binary, of different sizes (within one image or between
            the images of a list) or not of ``shape``; an integer ``(M, H, W)`` array (or a
            list of integer ``(H, W)`` arrays) holding only 0 and one other value (0/1, 0/255),
            which reads as one image's masks as well as M images' label maps (pass booleans
            for masks, ``(N, 1, H, W)`` for label maps).
        TypeError: A label map that is not of an integer dtype.
    """
    if hasattr(masks, "mask_list") and hasattr(masks, "mask"):  # captum ImageMaskInput
        if shape is None and hasattr(masks, "image") and hasattr(masks.image, "size"):
            shape = (masks.image.size[1], masks.image.size[0])
        # captum keeps an empty placeholder in whichever of the two was not given
        masks = masks.mask_list if len(masks.mask_list) else masks.mask
    if isinstance(masks, (np.ndarray, torch.Tensor)):
        array = _to_numpy(masks)
        if array.dtype == bool:  # a mask stack (or one mask)
            return to_partition(array, shape=shape, **options)[None, None]
        if not np.issubdtype(array.dtype, np.integer):
            hint = (
                "; for masks, pass booleans (masks > 0.5)"
                if array.size and np.isin(array, (0, 1)).all()
                else ""
            )
            raise TypeError(f"a label map must have an integer dtype, got {array.dtype}{hint}")
        if array.ndim == 3 and len(array) > 1 and _looks_binary(array):
            raise ValueError(
                f"an integer array {array.shape} that holds only 0 and at most one other "
                "value (1 or 255) is ambiguous: if it is one image's masks (a stack of 0/1 or "
                "0/255 masks, as read from PNG files), pass booleans (masks > 0); if it is the "
                "label maps of several images with two features each, pass them as "
                "(N, 1, H, W)"
            )
        if array.ndim == 2:
            array = array[None, None]
        elif array.ndim == 3:
            array = array[:, None]
        if array.ndim != 4 or array.shape[1] != 1:
            raise ValueError(
                f"a label map must be (H, W), (N, H, W) or (N, 1, H, W), got {array.shape}"
            )
        if shape is not None and array.shape[2:] != tuple(shape):
            raise ValueError(f"label map has shape {array.shape[2:]} but the images are {shape}")
        # in int64: a signed 8- or 16-bit map's ids minus its minimum can overflow its dtype
        array = array.astype(np.int64)
        relabelled = [relabel_sequential(item - item.min())[0] for item in array]
        return torch.from_numpy(np.stack(relabelled).astype(np.int64))
    if isinstance(masks, Sequence) and masks and not isinstance(masks, str):
        arrays = [_to_numpy(m) for m in masks if isinstance(m, (np.ndarray, torch.Tensor))]
        if (
            len(masks) > 1
            and len(arrays) == len(masks)
            and all(a.ndim == 2 and np.issubdtype(a.dtype, np.integer) for a in arrays)
            and all(_looks_binary(a[None]) for a in arrays)
        ):
            raise ValueError(
                f"a list of {len(masks)} integer (H, W) arrays that each hold only 0 and at "
                "most one other value (1 or 255) is ambiguous: if they are one image's masks "
                "(0/1 or 0/255, as read from PNG files), pass booleans ([m > 0 for m in "
                "masks]); if they are the label maps of several images with two features "
                "each, pass them as one (N, 1, H, W) array"
            )
        per_image = [_is_per_image(item) for item in masks]
        if all(per_image):
            parts = [as_feature_mask(item, shape, **options) for item in masks]
            sizes = [tuple(part.shape[2:]) for part in parts]
            if len(set(sizes)) > 1:
                odd = next(i for i, size in enumerate(sizes) if size != sizes[0])
                raise ValueError(
                    f"the images' masks differ in size: image 0's are {sizes[0]}, image {odd}'s "
                    f"{sizes[odd]}; one feature mask covers a batch of images of one size "
                    "(resize the masks to the images' size first)"
                )
            return torch.cat(parts)
        if any(per_image):
            first = per_image.index(True)
            raise ValueError(
                "a list of masks holds either one entry per image (an integer label map, a "
                "boolean mask stack, a list of masks or SAM's list of dicts each) or one "
                f"image's boolean (H, W) masks, not both: item {first} is an image's, item "
                f"{per_image.index(False)} one mask"
            )
    return to_partition(masks, shape=shape, **options)[None, None]


def _looks_binary(array: np.ndarray) -> bool:
    """Whether the integer ``(M, H, W)`` array holds only 0 and at most one other value, 1 or 255.

    Such a stack reads as M binary masks (0/1, or 0/255 from PNG files) as well as M label maps
    of two features (or one) each.
    """
    values = np.unique(array)
    return len(values) <= 2 and values[0] == 0 and int(values[-1]) in (0, 1, 255)


def _is_per_image(item: Any) -> bool:
    """Whether ``item`` is one image's masks (rather than one mask) in a per-image list.

    An integer (H, W) array is a label map, one image's features, whatever ids it holds (masks
    are boolean); a boolean (H, W) array is one mask.
    """
    if isinstance(item, Mapping):
        return False
    if hasattr(item, "mask_list"):
        return True
    if isinstance(item, (np.ndarray, torch.Tensor)):
        array = _to_numpy(item)
        return array.ndim == 3 or (array.ndim == 2 and np.issubdtype(array.dtype, np.integer))
    return isinstance(item, Sequence)


def segment_ids(mask: np.ndarray) -> np.ndarray:
    """``mask`` as int64 segment ids; a float mask must hold whole numbers.

    Raises:
        ValueError: If a float mask holds a fraction or a value that is not finite (its ids
            would have been truncated, merging segments without a word), or the mask is
            neither integer, boolean nor float.
    """
    if mask.dtype.kind in "iub":
        return mask.astype(np.int64)
    if mask.dtype.kind != "f":
        raise ValueError(f"feature_mask must hold integer segment ids, got dtype {mask.dtype}")
    bad = ~np.isfinite(mask) | (mask != np.round(mask))
    if bad.any():
        value = float(mask[bad].flat[0])
        raise ValueError(
            f"feature_mask must hold integer segment ids; this float feature_mask holds "
            f"{int(bad.sum())} non-integer values (e.g. {value:.4g}), which truncated would join "
            "other segments. A label map resized with mode='bilinear' holds such values along "
            "its borders: resize it with mode='nearest' (torch.nn.functional.interpolate("
            "mask.float(), size, mode='nearest').long()), or pass the segmenter's integer mask "
            "(round it yourself if rounding is meant)"
        )
    return mask.astype(np.int64)


def _without_leading_ones(tensor: torch.Tensor, rank: int) -> torch.Tensor:
    """``tensor`` without its leading dims of size 1 beyond ``rank`` (a 1 x 1 map keeps both)."""
    while tensor.dim() > rank and tensor.shape[0] == 1:
        tensor = tensor[0]
    return tensor


def segment_means(
    values: torch.Tensor | np.ndarray, feature_mask: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of a per-pixel map over each feature: one score per segment.

    For the attributions of a feature method (CTC, Captum's ``FeatureAblation``, ``Lime``), which
    repeat each feature's score on its pixels, this gives the scores back; for a pixel map
    (Grad-CAM, Integrative CAM, an Explainer mask) it is the map's average over each segment,
    which ranks segments on the same footing.

    Args:
        values: ``(H, W)`` map; ``(1, H, W)``, ``(1, 1, H, W)`` and ``(C, H, W)`` are accepted
            too (channels are summed: for a feature method, whose attributions repeat the
            score in every channel, pass one channel, ``attributions[0, 0]``).
        feature_mask: ``(H, W)`` integer feature ids (or ``(1, H, W)`` / ``(1, 1, H, W)``); a
            float mask of whole numbers is read as its integers.

    Returns:
        ``(ids, means)``: the sorted feature ids present in the mask, and the float64 mean of
        ``values`` over each.

    Raises:
        ValueError: If the map and the mask do not have the same height and width, or a float
            mask holds a fraction or a value that is not finite.
    """
    mask = _without_leading_ones(torch.from_numpy(segment_ids(_to_numpy(feature_mask))), 2)
    array = _without_leading_ones(torch.as_tensor(_to_numpy(values), dtype=torch.float64), 3)
    if array.dim() == 3:
        array = array.sum(0)
    if mask.dim() != 2 or array.shape != mask.shape:
        raise ValueError(
            f"values {tuple(array.shape)} and feature_mask {tuple(mask.shape)} must both be "
            "(H, W) maps of the same size"
        )
    ids, inverse = torch.unique(mask, return_inverse=True)
    sums = torch.zeros(len(ids), dtype=torch.float64).index_add_(
        0, inverse.flatten(), array.flatten()
    )
    counts = torch.bincount(inverse.flatten(), minlength=len(ids)).to(torch.float64)
    return ids, sums / counts
