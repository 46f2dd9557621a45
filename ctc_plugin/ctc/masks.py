"""Feature masks in Captum's convention, and the masked copies CTC propagates.

A feature mask assigns every input element an integer feature id, exactly as Captum's
``FeatureAblation`` expects: one integer tensor per input, broadcastable to it, with a first
dimension of 1 (shared by the batch) or N (per example). Ids need not be contiguous; the same
id in two inputs of a tuple is one feature. A Python list of disjoint boolean masks (the form
SAM and ``captum.attr.ImageMaskInput`` use) is accepted too; pixels no mask covers become one
more feature.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ctc_plugin.inputs import broadcasts_to, check_has_values
from ctc_plugin.wording import caller_stacklevel, counted


@dataclass(frozen=True)
class FeatureSet:
    """Validated feature masks with their ids.

    Attributes:
        masks: One int64 mask per input, broadcastable to it.
        ids: (K,) sorted feature ids found in any mask.
        presence: (N, K) whether each example has each feature.
    """

    masks: tuple[torch.Tensor, ...]
    ids: torch.Tensor
    presence: torch.Tensor

    @property
    def count(self) -> int:
        """Number of features K."""
        return int(self.ids.numel())


def masks_from_boolean_list(masks: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Turn a list of disjoint boolean (H, W) masks into an integer feature mask.

    The masks cover the last two dimensions of ``like`` (an image batch's (H, W), a sequence
    batch's (L, D)); the result has ``like``'s rank, (1, 1, H, W) for images. Mask ``i`` becomes
    feature ``i``; pixels no mask covers become feature ``len(masks)``.

    Raises:
        ValueError: an empty mask, overlapping masks, masks of the wrong shape, or an input of
            fewer than 3 dimensions (rows of features: their masks are integer ids).
    """
    if like.dim() < 3:
        raise ValueError(
            f"a list of boolean masks covers the two last dimensions of each example (H, W) "
            f"and the input {tuple(like.shape)} has one per example: for rows of features "
            "(N, F) give integer feature ids, e.g. one feature per column: "
            "feature_mask=torch.arange(x.shape[1]).unsqueeze(0)"
        )
    spatial = tuple(like.shape[-2:])
    label = torch.full(spatial, -1, dtype=torch.long, device=like.device)
    for i, mask in enumerate(masks):
        mask = torch.as_tensor(mask, device=like.device)
        if mask.dtype != torch.bool or tuple(mask.shape) != spatial:
            hint = ""
            if not mask.is_floating_point() and mask.dtype != torch.bool:
                binary = tuple(mask.shape) == spatial and bool(((mask == 0) | (mask == 1)).all())
                hint = (
                    "; make a 0/1 mask boolean with mask.bool()"
                    if binary
                    else "; an integer mask of feature ids is given as it is, not in a list"
                )
            raise ValueError(
                f"mask {i} of the list must be a boolean tensor of shape {spatial}; got "
                f"{mask.dtype} {tuple(mask.shape)}{hint}"
            )
        if not mask.any():
            raise ValueError(f"mask {i} of the list is empty: every feature needs a pixel")
        if (label[mask] >= 0).any():
            raise ValueError(
                f"mask {i} overlaps an earlier mask; CTC needs a partition. Resolve overlaps "
                "with ctc_plugin.features.to_partition(masks) first"
            )
        label[mask] = i
    label[label < 0] = len(masks)
    return label.view(*([1] * (like.dim() - 2)), *spatial)


def prepare_features(
    inputs: tuple[torch.Tensor, ...],
    feature_mask: torch.Tensor | tuple[torch.Tensor, ...] | list,
) -> FeatureSet:
    """Validate feature masks against the inputs and collect the feature ids.

    Raises:
        ValueError: with what was wrong and how to fix it (count, dtype, shape, negative ids).
    """
    if isinstance(feature_mask, list):
        if len(inputs) != 1:
            integer = [isinstance(m, torch.Tensor) and m.dtype != torch.bool for m in feature_mask]
            hint = (
                f"; for {counted(len(inputs), 'input')}, give one integer mask per input as a "
                "tuple (Captum's form): feature_mask=(mask_1, mask_2, ...)"
                if feature_mask and all(integer)
                else ""
            )
            raise ValueError(f"a list of boolean masks is only accepted for a single input{hint}")
        feature_mask = masks_from_boolean_list(feature_mask, inputs[0])
    masks = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
    if len(masks) != len(inputs):
        raise ValueError(
            f"got {counted(len(masks), 'feature mask')} for {counted(len(inputs), 'input')}; "
            "give one mask per input"
        )
    n = inputs[0].shape[0]
    checked = []
    for i, (mask, x) in enumerate(zip(masks, inputs)):
        if not isinstance(mask, torch.Tensor):
            raise ValueError(f"feature_mask {i} must be a torch.Tensor, got {type(mask).__name__}")
        check_has_values(mask, f"feature_mask {i}")
        if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
            raise ValueError(
                f"feature_mask {i} must hold integer feature ids; got dtype {mask.dtype}. "
                "Cast a label map with .long(); turn boolean masks into ids first"
            )
        if mask.dim() > x.dim():
            raise ValueError(
                f"feature_mask {i} has shape {tuple(mask.shape)}, more dimensions than its "
                f"input {tuple(x.shape)}; if that input is one example without its batch "
                "dimension, add it: x.unsqueeze(0)"
            )
        if mask.dim() == x.dim() - 1 == 3 and mask.shape[0] == x.shape[0] == x.shape[1] > 1:
            warnings.warn(
                f"feature_mask {i} of shape {tuple(mask.shape)} is read as one map per channel, "
                f"shared by the examples of its input {tuple(x.shape)} (Captum's broadcasting); "
                "if it holds one label map per example, stacked, give it as (N, 1, H, W) "
                "(mask.unsqueeze(1)); give (1, C, H, W) (mask.unsqueeze(0)) to say it is per "
                "channel and silence this warning",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )
        if not broadcasts_to(mask.shape, x.shape):
            raise ValueError(
                f"feature_mask {i} of shape {tuple(mask.shape)} does not broadcast to its input "
                f"of shape {tuple(x.shape)}: each dimension must be 1 or equal to the input's, "
                "e.g. (1, 1, H, W) for all examples or (N, 1, H, W) per example"
            )
        smallest = int(mask.min()) if mask.numel() else 0
        if smallest < 0:
            raise ValueError(
                f"feature_mask {i} has negative ids (the smallest is {smallest}); feature ids "
                "must be >= 0: shift them with mask - mask.min(), which keeps every feature"
            )
        checked.append(mask.to(device=x.device, dtype=torch.long))
    ids = torch.unique(torch.cat([m.flatten() for m in checked]))
    presence = torch.zeros(n, ids.numel(), dtype=torch.bool, device=ids.device)
    for mask, x in zip(checked, inputs):
        per_example = mask.expand(x.shape).reshape(n, -1) if mask.dim() == x.dim() else None
        if per_example is None:
            presence |= torch.isin(ids, mask).unsqueeze(0)
        else:
            for row in range(n):
                presence[row] |= torch.isin(ids, per_example[row])
    return FeatureSet(masks=tuple(checked), ids=ids, presence=presence)


@torch.no_grad()
def masked_copies(
    x: torch.Tensor,
    baseline: torch.Tensor | None,
    mask: torch.Tensor,
    chunk_ids: torch.Tensor,
    reference_full: bool,
    baseline_copy: bool,
) -> torch.Tensor:
    """The copies of every example of one input, flat as (N*C, ...).

    Order per example: the input itself (gate copy), ``x - baseline`` (reference full copy,
    optional), ``(x - baseline)`` restricted to each feature of ``chunk_ids``, the baseline
    (when ``baseline_copy``). Computed without autograd (the copies' pass runs without it), so
    inputs that require gradients are taken as they are.
    """
    difference = x if baseline is None else x - baseline
    mask = mask.expand(x.shape)
    selection = mask.unsqueeze(1) == chunk_ids.view(1, -1, *([1] * (x.dim() - 1)))
    baseline_copy = baseline_copy and baseline is not None
    first = 1 + int(reference_full)  # the first feature copy
    copies = first + len(chunk_ids) + int(baseline_copy)
    dtype = torch.result_type(difference, selection)
    out = torch.empty(x.shape[0], copies, *x.shape[1:], dtype=dtype, device=x.device)
    out[:, 0] = x
    if reference_full:
        out[:, 1] = difference
    # the feature copies are written in place: no (N, K, ...) product beside the result
    torch.mul(difference.unsqueeze(1), selection, out=out[:, first : first + len(chunk_ids)])
    if baseline_copy:
        out[:, -1] = baseline.expand(x.shape)
    return out.flatten(0, 1)


def spread_scores(
    scores: torch.Tensor, features: FeatureSet, index: int, x: torch.Tensor
) -> torch.Tensor:
    """Attribution for one input: each element carries its feature's score (N, K) -> x.shape."""
    mask = features.masks[index].expand(x.shape)
    positions = torch.searchsorted(features.ids, mask.reshape(x.shape[0], -1).contiguous())
    return scores.gather(1, positions).view(x.shape)


def _as_real_tensor(value: Any, name: str) -> torch.Tensor:
    """``value`` (a tensor, number or array) as a tensor of real values, or a clear error."""
    tensor, why = None, ""
    if not isinstance(value, str | bytes):  # torch would read neither as numbers
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as error:
            why = f" that torch cannot read ({error})"
    if tensor is None:
        shown = f" {value!r}" if isinstance(value, str | bytes) else why
        raise TypeError(
            f"{name} must be a number or a tensor broadcastable to its input, got "
            f"{type(value).__name__}{shown}"
        )
    check_has_values(tensor, name)
    if tensor.is_complex():
        raise TypeError(
            f"{name} is complex ({tensor.dtype}); give real values (its real part, x.real, if "
            "that is what you mean)"
        )
    return tensor


def broadcast_to_inputs(
    values: Any, inputs: tuple[torch.Tensor, ...], what: str
) -> tuple[torch.Tensor, ...]:
    """One finite tensor per input, broadcast to that input's shape, dtype and device.

    Args:
        values: A tensor or number (used for every input), or a tuple with one per input.
        inputs: The inputs.
        what: What the values are, for error messages (e.g. ``"baseline"``).

    Raises:
        TypeError: a value that is no number or tensor, or a complex one.
        ValueError: a wrong count, a shape that does not broadcast, a tensor on the meta device
            or NaN/infinite values.
    """
    values = values if isinstance(values, tuple) else (values,) * len(inputs)
    if len(values) != len(inputs):
        raise ValueError(f"got {len(values)} {what}s for {len(inputs)} inputs; give one per input")
    out = []
    for i, (value, x) in enumerate(zip(values, inputs)):
        value = _as_real_tensor(value, f"{what} {i}").detach().to(device=x.device, dtype=x.dtype)
        try:
            value = value.expand(x.shape)
        except RuntimeError:
            raise ValueError(
                f"{what} {i} of shape {tuple(value.shape)} does not broadcast to its input of "
                f"shape {tuple(x.shape)}"
            ) from None
        if not torch.isfinite(value).all():
            raise ValueError(f"{what} {i} contains NaN or infinite values")
        out.append(value)
    return tuple(out)
