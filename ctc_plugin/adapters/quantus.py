"""Run Quantus metrics on ctc-plugin's methods (and on every method of the benchmark registry).

Quantus calls ``explain_func(model=..., inputs=..., targets=..., **explain_func_kwargs)`` with
NumPy batches and expects a NumPy array back. `explain_func` is that function for every method in
`ctc_plugin.harness.methods.registry` (the same call as on the docs page "Evaluation"):

    import quantus
    from ctc_plugin.adapters.quantus import explain_func

    metric = quantus.MaxSensitivity(nr_samples=5, disable_warnings=True)
    scores = metric(model=model, x_batch=x, y_batch=y, explain_func=explain_func,
                    explain_func_kwargs={"method": "CTC-proportional"})

Feature-based methods (CTC, FeatureAblation, Lime, KernelShap) need features: pass
``feature_mask`` (used for every batch, so only with a fixed batch) or a ``segmenter`` that
segments each batch Quantus sends. The default,
``SuperpixelSegmenter(value_range="auto")``, re-segments every batch, perturbed ones included,
reading each image's colours from its own minimum and maximum: Quantus does not say how its
inputs are normalised, and the noise of its robustness metrics (``MaxSensitivity``,
``AvgSensitivity``, ...) pushes pixels out of any declared range, which a segmenter with a
fixed ``value_range`` refuses. Pass a segmenter with the declared ``value_range``/``mean``/``std``
to control the colours, or `ctc_plugin.features.GridSegmenter`, which reads only the shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ctc_plugin.evaluation.arguments import is_probability_output

__all__ = ["explain_func"]

#: Keyword arguments of Quantus's own explanation functions that ``explain_func`` accepts: Quantus's
#: metrics add ``device`` (ignored: the batch's device is the model's); ``channel_first`` is
#: ignored (Quantus passes a torch model's batches channels-first); ``softmax`` is checked
#: against the model (see `explain_func`).
_QUANTUS_KEYS = frozenset({"device", "channel_first", "softmax"})


def _check_softmax(model: nn.Module, images: Tensor, softmax: Any) -> None:
    """Refuse a ``softmax`` that asks to explain another output than the model's own.

    Quantus's ``explain`` adds a softmax to a model whose output is logits (``softmax=True``)
    or removes it from one whose output is probabilities (``softmax=False``); ``explain_func``
    explains the model's output as it is, so it refuses both requests rather than ignore them.
    What the output is, is read from the output itself (one forward pass on the batch: every
    row non-negative and summing to 1 is a softmax), not from the model's last module.
    """
    if softmax is None:
        return
    with torch.no_grad():
        probabilities = is_probability_output(model(images))
    if softmax and not probabilities:
        raise ValueError(
            "explain_func got softmax=True, but the model's output is no softmax (its rows are "
            "not probabilities summing to 1), and explain_func explains the output as it is, "
            "without adding one; drop softmax=True, or pass a model whose output is the softmax"
        )
    if not softmax and probabilities:
        raise ValueError(
            "explain_func got softmax=False, but the model's output is a softmax (every row sums "
            "to 1), which explain_func does not remove; drop softmax=False, or pass the model "
            "without its final softmax to explain the logits"
        )


def _tensor(value: Any, name: str, dtype: torch.dtype | None, device: torch.device) -> Tensor:
    """``value`` (an array or tensor) on ``device``, in ``dtype`` (``None``: its own)."""
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype)
    try:
        return torch.as_tensor(np.asarray(value), dtype=dtype, device=device)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be an array or tensor, got {type(value).__name__}") from error


def _feature_ids(value: Any, images: Tensor) -> Tensor:
    """``feature_mask`` as integer ids ``(N or 1, 1 or C, H, W)`` for ``images``.

    Quantus hands NumPy arrays, whose label maps are often floats; their whole numbers are
    the ids. A fractional value is no id (a label map resized with bilinear interpolation
    holds them along every border), and truncated it would join another feature. An
    ``(H, W)`` map is one map for every image.

    Raises:
        ValueError: NaN, infinite or fractional values, saying how to resize label maps; a
            shape that does not fit the batch, naming the shapes that do.
    """
    mask = _tensor(value, "feature_mask", None, images.device)
    count, channels, height, width = images.shape
    given = tuple(mask.shape)
    if mask.dim() == 2:
        mask = mask[None, None]
    fits = (
        mask.dim() == 4
        and mask.shape[0] in (1, count)
        and mask.shape[1] in (1, channels)
        and tuple(mask.shape[2:]) == (height, width)
    )
    if not fits:
        raise ValueError(
            f"feature_mask of shape {given} does not fit the batch {tuple(images.shape)}: "
            f"give {(1, 1, height, width)} (or {(height, width)}) for every image, or "
            f"{(count, 1, height, width)} per image (for batches of another size, pass "
            "segmenter= to segment each batch)"
        )
    if mask.is_floating_point():  # whole numbers only (`segment_ids` says what else to do)
        from ctc_plugin.features.partition import segment_ids

        return torch.from_numpy(segment_ids(mask.cpu().numpy())).to(images.device)
    return mask.long()


def explain_func(
    model: nn.Module,
    inputs: np.ndarray | Tensor,
    targets: np.ndarray | Tensor | int,
    method: str = "CTC-proportional",
    feature_mask: np.ndarray | Tensor | None = None,
    segmenter: Callable[[Tensor], Tensor] | None = None,
    explainer: nn.Module | None = None,
    n_samples: int = 100,
    **kwargs: Any,
) -> np.ndarray:
    """Explain a batch for Quantus and return ``(N, 1, H, W)`` float32 maps.

    Args:
        model: The PyTorch classifier (Quantus passes the unwrapped module).
        inputs: Images ``(N, C, H, W)`` as the model takes them.
        targets: Class per image (or one int for all): integers, as in Quantus' ``y_batch``;
            float labels are refused rather than truncated.
        method: A name from `ctc_plugin.harness.methods.registry`, e.g. ``"CTC-reference"``,
            ``"IntegrativeCAM"``, ``"Explainer"`` (needs ``explainer``) or a peer such as
            ``"IntegratedGradients"``.
        feature_mask: Fixed features ``(N or 1, 1, H, W)`` for feature-based methods (an
            ``(H, W)`` map serves every image); integer ids, or floats holding whole numbers.
        segmenter: Makes features for each batch when no ``feature_mask`` is given; default
            ``SuperpixelSegmenter(value_range="auto")`` (see the module docstring).
        explainer: The trained Explainer of ``model`` for ``method="Explainer"``.
        n_samples: Samples for Lime and KernelShap.
        **kwargs: Keys of Quantus's own explanation functions: ``device`` (Quantus adds it;
            ignored, the maps are computed on the model's device) and ``channel_first``
            (ignored: Quantus passes channels-first batches to a torch model) are accepted;
            ``softmax`` is accepted where the model's output already is what it asks for
            (``True``: its rows are probabilities summing to 1; ``False``: they are not, read
            from one forward pass on the batch) and refused otherwise, since ``explain_func``
            explains the model's output as it is.
            Any other key is an error.

    Returns:
        NumPy array ``(N, 1, H, W)``, float32.

    Raises:
        ValueError: For an unknown method or keyword, a method that does not apply to the
            model (e.g. ``"AttnLRP"`` on a CNN, Zennit's LRP on a transformer), a method that
            needs what is missing, inputs with NaN or infinite values, a ``softmax`` the model's
            output does not match, targets that are not one integer class per image, or a
            ``feature_mask`` that does not fit the batch or holds fractional ids.
        TrainingModeError: The model has BatchNorm or dropout in training mode (an explanation
            would update its statistics or be random); nothing has run (call ``model.eval()``).
    """
    from ctc_plugin.evaluation.arguments import as_targets
    from ctc_plugin.harness.methods import registry
    from ctc_plugin.inputs import (
        CHANNEL_COUNTS,
        check_eval_mode,
        check_inputs,
        device_of,
        floating_dtype,
    )
    from ctc_plugin.targets import output_not_a_tensor

    unknown = set(kwargs) - _QUANTUS_KEYS
    if unknown:
        raise ValueError(f"explain_func got unknown keyword arguments {sorted(unknown)}")
    methods = registry(explainer=explainer, n_samples=n_samples)
    if method not in methods:
        hint = " (pass explainer=...)" if method == "Explainer" else ""
        raise ValueError(f"unknown method {method!r}{hint}; choose one of {sorted(methods)}")
    spec = methods[method]
    if spec.applies_to is not None and not spec.applies_to(model):
        fits = [n for n, s in methods.items() if s.applies_to is None or s.applies_to(model)]
        raise ValueError(
            f"method {method!r} does not apply to {type(model).__name__} (the benchmark leaves "
            f"it out for such models); choose one of {sorted(fits)}"
        )
    check_eval_mode(model)  # before any method runs: its statistics must not change
    device = device_of(model)
    # in the model's floating dtype (a float64 model gets float64 images), float32 otherwise
    images = _tensor(inputs, "inputs", floating_dtype(model) or torch.float32, device)
    if images.dim() != 4:
        raise ValueError(f"inputs must be (N, C, H, W) channels-first, got {tuple(images.shape)}")
    if images.shape[1] not in CHANNEL_COUNTS and images.shape[-1] in CHANNEL_COUNTS:
        raise ValueError(
            f"inputs must be (N, C, H, W) channels-first, got {tuple(images.shape)}, which looks "
            "channels-last: give x_batch.transpose(0, 3, 1, 2) (Quantus passes a torch model's "
            "batches channels-first)"
        )
    check_inputs(images, tuples=False)  # NaN or infinite values: no method may pass them on
    with torch.no_grad():  # a Hugging Face model's output object, say: every method needs scores
        output = model(images[:1])
    if not isinstance(output, Tensor):
        raise output_not_a_tensor(output, modules_only=True)
    _check_softmax(model, images, kwargs.get("softmax"))
    labels = as_targets(targets, len(images)).to(device)  # integers only, never truncated
    mask = None
    if spec.uses_features:
        if feature_mask is not None:
            mask = _feature_ids(feature_mask, images)
        else:
            if segmenter is None:
                from ctc_plugin.features import SuperpixelSegmenter

                segmenter = SuperpixelSegmenter(value_range="auto")
            mask = segmenter(images).to(device)
    maps = spec.fn(model, images, labels, mask)
    return maps.detach().float().cpu().numpy()
