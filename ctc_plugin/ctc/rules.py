"""The per-operation CTC rules, shared by the Captum class and the Zennit composite.

A :class:`GatedPass` holds what one CTC pass needs: the :class:`CopyLayout` of the batch and
the :class:`BiasSharing` strategy. Its methods take and return *flat* propagated tensors
(N*C, ...) and implement one rule each:

- :meth:`GatedPass.affine`: a bias-free result plus the bias shared among the copies
  (convolutions, linear layers, BatchNorm's shift, constants added to the signal);
- :meth:`GatedPass.fold_batch_norm`: BatchNorm after a biased layer, folded into it so the pair
  shares one bias;
- :meth:`GatedPass.relu_gate`, :meth:`GatedPass.leaky_relu_gate`: the original pass's
  activation pattern applied to every copy;
- :meth:`GatedPass.rescale_gate`: smooth elementwise activations as the ratio ``y / x`` of the
  original pass (exact for the gate copy, zero where the original input is zero);
- :meth:`GatedPass.max_pool_switches`: every copy routed through the original argmax positions.

The gate copy (copy 0 of each example) always goes through the model's real operation, so
the gates of every later layer come from the original forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ctc_plugin.ctc.boxes import Box, Window, window_boxes
from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.sharing import BiasSharing

#: Attribute set on a propagated tensor that came out of a biased affine rule, holding
#: ``(bias_free, bias)`` so a following BatchNorm can fold itself into that layer.
FOLD_ATTRIBUTE = "_ctc_affine_parts"

#: Attribute set on a propagated tensor whose copies' nonzero values are known to lie in boxes
#: (:mod:`ctc_plugin.ctc.boxes`), one per row.
BOXES_ATTRIBUTE = "_ctc_boxes"


def _storage_use_count(tensor: torch.Tensor) -> int:
    """How many tensors share ``tensor``'s memory (including it), as torch counts them."""
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


try:  # torch's count of tensors on one storage (a private API: without it, no in-place scaling)
    _SOLE_USE_COUNT: int | None = _storage_use_count(torch.empty(1))
except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
    _SOLE_USE_COUNT = None


def sole_holder(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is no view and no other tensor shares its memory.

    Python references to ``tensor`` itself are not counted: a pass that changes such a tensor
    in place must retire it (:meth:`GatedPass.retire`).
    """
    return (
        _SOLE_USE_COUNT is not None
        and tensor._base is None
        and not tensor.requires_grad
        and _storage_use_count(tensor) == _SOLE_USE_COUNT
    )


def batch_norm_affine(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` such that eval-mode ``batch_norm(x) = x * scale + shift``."""
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


class BatchDimensionError(ValueError):
    """An operation's result lost the batch dimension that carries the copies."""


@dataclass
class GatedPass:
    """State and rules of one CTC pass over a batch of copies.

    Attributes:
        layout: Where each copy sits in the batch.
        sharing: How biases are shared among the copies.
        token: An object identifying this pass; tensors it propagates are tagged with it.
        used_rescale_gate: Set once a smooth activation went through :meth:`rescale_gate`.
        scale_in_place: Let :meth:`fold_batch_norm` scale a tensor no other tensor shares in
            place (one pass over the copies fewer) and retire it. Only for a caller that
            refuses every later use of a retired tensor (:class:`~ctc_plugin.ctc.interception.
            CTCMode` raises :class:`~ctc_plugin.ctc.errors.RetiredTensorError`).
        retired_token: The tag of tensors retired by this pass.
        scaled_in_place: How many BatchNorms scaled their input in place (for diagnostics).
        track_boxes: Carry the boxes around each copy's nonzero values from layer to layer
            (:mod:`ctc_plugin.ctc.boxes`) and hand them to the sharing; the caller puts the
            input batch's boxes on it (:meth:`set_boxes`).
    """

    layout: CopyLayout
    sharing: BiasSharing
    token: object = field(default_factory=object)
    used_rescale_gate: bool = False
    scale_in_place: bool = False
    retired_token: object = field(default_factory=object)
    scaled_in_place: int = 0
    track_boxes: bool = False

    # ------------------------------------------------------------------ tagging
    def tag(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mark a tensor as carrying copies of this pass; return it."""
        if tensor.dim() == 0 or tensor.shape[0] != self.layout.batch:
            raise BatchDimensionError(
                f"its result has shape {tuple(tensor.shape)} but must keep the batch of copies "
                f"(size {self.layout.batch}) as dimension 0; CTC needs models whose operations "
                "keep dimension 0 as the batch dimension"
            )
        tensor._ctc_pass = self.token  # type: ignore[attr-defined]
        # Any operation producing this object (an in-place one too) ends a pending BatchNorm
        # fold, and its boxes hold only where the operation's rule carries them on.
        for attribute in (FOLD_ATTRIBUTE, BOXES_ATTRIBUTE):
            if hasattr(tensor, attribute):
                delattr(tensor, attribute)
        return tensor

    def boxes(self, tensor: torch.Tensor) -> list[Box] | None:
        """The boxes around the nonzero values of each row of a propagated tensor, if known."""
        return getattr(tensor, BOXES_ATTRIBUTE, None)

    def set_boxes(self, tensor: torch.Tensor, boxes: list[Box] | None) -> torch.Tensor:
        """Record (when tracking boxes) that each row's nonzero values lie in its box."""
        if self.track_boxes and boxes is not None:
            setattr(tensor, BOXES_ATTRIBUTE, boxes)
        return tensor

    def is_propagated(self, value: Any) -> bool:
        """Whether ``value`` is a tensor carrying copies of this pass."""
        return isinstance(value, torch.Tensor) and getattr(value, "_ctc_pass", None) is self.token

    def retire(self, tensor: torch.Tensor) -> None:
        """Mark a propagated tensor whose memory now holds another result: it must not be read."""
        tensor._ctc_pass = self.retired_token  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ affine rules
    def affine(
        self,
        bias_free: torch.Tensor,
        bias: torch.Tensor | None,
        foldable: bool = False,
        boxes: list[Box] | None = None,
    ) -> torch.Tensor:
        """Return ``bias_free`` plus the bias shared among the copies (in place on a new tensor).

        Args:
            bias_free: (N*C, *rest) result of the operation without its bias.
            bias: Bias broadcastable to ``rest`` (aligned to its trailing dims), or to the
                grouped (N, C, *rest) shape; ``None`` for no bias.
            foldable: Record the parts so a following BatchNorm can fold itself in.
            boxes: Boxes holding every nonzero value of each row of ``bias_free``. The shares
                are 0 where a copy is 0, so the result keeps them.
        """
        if bias is None:
            return self.set_boxes(self.tag(bias_free), boxes)
        out = bias_free.clone() if foldable else bias_free
        self.sharing.add_bias(self.layout.group(out), bias.to(out.dtype), self.layout, boxes=boxes)
        self.set_boxes(self.tag(out), boxes)
        if foldable and self.sharing.name != "none":
            setattr(out, FOLD_ATTRIBUTE, (bias_free, bias))
        return out

    def fold_batch_norm(
        self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
    ) -> torch.Tensor:
        """Apply an eval-mode BatchNorm ``x * scale + shift`` (both aligned to ``x``'s rest).

        When ``x`` came from a biased layer, the BatchNorm is folded into it: the pair acts as
        one layer with weight ``scale * W`` and bias ``scale * b + shift``, sharing one bias.
        Otherwise, with :attr:`scale_in_place` and no other tensor on ``x``'s memory (typically
        a bias-free convolution's output), ``x`` is scaled in place and retired: the result is
        another tensor object on the same memory, and any later use of ``x`` is refused.
        """
        parts = getattr(x, FOLD_ATTRIBUTE, None)
        boxes = self.boxes(x)
        if parts is not None:
            bias_free, bias = parts
            folded_bias = bias * scale + shift
            return self.affine(bias_free * scale, folded_bias, boxes=boxes)
        if self.scale_in_place and scale.dtype == x.dtype and sole_holder(x):
            scaled = x.detach()  # the same memory under a new tensor object
            self.retire(x)
            self.scaled_in_place += 1
            return self.affine(scaled.mul_(scale), shift, boxes=boxes)
        return self.affine(x * scale, shift, boxes=boxes)

    # ------------------------------------------------------------------ gates
    def _apply_gate(self, x: torch.Tensor, gate: torch.Tensor, inplace: bool) -> torch.Tensor:
        grouped, boxes = self.layout.group(x), self.boxes(x)  # a gate keeps zeros
        if inplace:
            grouped.mul_(gate)
            return self.set_boxes(self.tag(x), boxes)
        return self.set_boxes(self.tag((grouped * gate).flatten(0, 1)), boxes)

    def relu_gate(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """ReLU: every copy passes where the original pre-activation was positive."""
        gate = self.layout.group(x)[:, :1] > 0
        return self._apply_gate(x, gate, inplace)

    def leaky_relu_gate(
        self, x: torch.Tensor, negative_slope: float, inplace: bool = False
    ) -> torch.Tensor:
        """LeakyReLU: slope 1 where the original was positive, ``negative_slope`` elsewhere."""
        original = self.layout.group(x)[:, :1]
        gate = torch.where(original > 0, 1.0, original.new_tensor(negative_slope))
        return self._apply_gate(x, gate, inplace)

    def rescale_gate(
        self, x: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Smooth elementwise activation as the rescale gate ``y / x`` of the original pass.

        The gate copy gets the activation's exact output; other copies are multiplied by
        ``y / x`` (0 where the original input is exactly 0).
        """
        self.used_rescale_gate = True
        original = self.layout.group(x)[:, 0]
        y = activation(original)
        nonzero = original != 0
        gate = torch.where(nonzero, y / torch.where(nonzero, original, 1.0), 0.0)
        out = self.layout.group(x) * gate.unsqueeze(1)
        out[:, 0] = y
        return self.set_boxes(self.tag(out.flatten(0, 1)), self.boxes(x))

    def max_pool_switches(
        self,
        x: torch.Tensor,
        pool_with_indices: Callable[[torch.Tensor], Any],
        window: Window | None = None,
    ) -> torch.Tensor:
        """Max pooling: every copy takes the values at the original pass's argmax positions.

        Args:
            x: (N*C, channels, *spatial) propagated input.
            pool_with_indices: The pooling operation with ``return_indices=True`` bound, taking
                an (N, channels, *spatial) tensor and returning ``(values, indices)``.
            window: The pooling window, to carry the boxes of ``x`` over (``None``: drop them).
                With boxes, each copy is gathered only inside its output box (the rest is 0).
        """
        grouped = self.layout.group(x)
        spatial = grouped.dim() - 3
        _, indices = pool_with_indices(grouped[:, 0])
        flat = grouped.flatten(3) if spatial > 0 else grouped.unsqueeze(-1)
        boxes = self.boxes(x)
        if boxes is not None and window is not None and spatial > 0:
            boxes = window_boxes(boxes, window, tuple(indices.shape[2:]))
            pooled = _gather_in_boxes(flat, indices, boxes)
            return self.set_boxes(self.tag(pooled.flatten(0, 1)), boxes)
        index = indices.flatten(2).unsqueeze(1).expand(-1, grouped.shape[1], -1, -1)
        pooled = flat.gather(3, index).reshape(*grouped.shape[:3], *indices.shape[2:])
        return self.tag(pooled.flatten(0, 1))


def _gather_in_boxes(flat: torch.Tensor, indices: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
    """Pooled copies: each copy's values at ``indices`` inside its box, 0 elsewhere.

    Args:
        flat: (N, C, channels, positions) grouped copies with flattened spatial dims.
        indices: (N, channels, *out) argmax positions of the gate copy's pooling.
        boxes: One output box per copy (N*C), holding all its nonzero outputs.
    """
    examples, copies = flat.shape[:2]
    pooled = flat.new_zeros(examples, copies, *indices.shape[1:])
    for row, box in enumerate(boxes):
        if box is None:
            continue
        n, c = divmod(row, copies)
        where = (slice(None), *box)
        index = indices[n][where]
        pooled[n, c][where] = flat[n, c].gather(1, index.flatten(1)).view(index.shape)
    return pooled
