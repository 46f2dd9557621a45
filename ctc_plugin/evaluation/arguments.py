"""The metrics' arguments: shape checks, conversions and the method call they share.

One place and one set of error messages for every metric (and for the benchmark and the
Quantus adapter that call methods the same way): the `Method` type, how a method is called
(`explain`) and how the model's targets are read (`predict`, `model_targets`).

The class explained is ``target=`` in every metric, as in Captum's ``attribute`` methods and
metrics (``infidelity``, ``sensitivity_max``) and in CTC and Integrative CAM; the metrics'
earlier ``targets=`` still works, with a ``FutureWarning`` (`target_renamed`).

The metrics compute on the CPU and return their scores there, wherever the maps and masks
come from (maps on a GPU, masks loaded from disk): `as_maps` and `as_masks` move them there.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ctc_plugin._moved import renamed_keywords
from ctc_plugin.inputs import check_eval_mode, dtype_mismatch_named, is_integer
from ctc_plugin.inputs import check_images as shared_check_images
from ctc_plugin.targets import class_indices, resolve_targets

#: The decorator of every function of the evaluation that takes the class explained: the
#: parameter is ``target`` (Captum's name); ``targets=``, its name before, still works and
#: warns (``FutureWarning``), and giving both is a ``TypeError``.
target_renamed = renamed_keywords(
    {"targets": "target"}, why="the name Captum's attribute methods and metrics use"
)


def as_tensor(value: Tensor | np.ndarray, name: str) -> Tensor:
    """Return ``value`` as a tensor (NumPy arrays are converted without copying when possible)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, Tensor):
        return value
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")


def as_maps(attributions: Tensor | np.ndarray, name: str = "attributions") -> Tensor:
    """Return attribution maps as a float64 ``(N, H, W)`` tensor on the CPU.

    Accepts ``(N, H, W)``, ``(N, 1, H, W)`` or ``(N, C, H, W)`` (channels are summed, as Captum's
    and Quantus' image visualisations do).

    Raises:
        ValueError: for any other shape, channels-last maps ``(N, H, W, 1 or 3)``, complex
            maps, or maps that contain NaN or infinity.
    """
    maps = as_tensor(attributions, name).detach()
    if maps.is_complex():
        raise ValueError(
            f"{name} are complex ({maps.dtype}); give real maps (maps.real, or maps.abs() for "
            "their magnitude)"
        )
    if maps.dim() == 4 and maps.shape[-1] in (1, 3) and maps.shape[1] not in (1, 3):
        raise ValueError(
            f"{name} of shape {tuple(maps.shape)} look channels-last (N, H, W, C); give them "
            "channels-first: maps.permute(0, 3, 1, 2)"
        )
    if maps.dim() == 4:
        maps = maps.sum(dim=1)
    if maps.dim() != 3:
        raise ValueError(
            f"{name} must have shape (N, H, W), (N, 1, H, W) or (N, C, H, W); "
            f"got {tuple(maps.shape)}"
        )
    maps = maps.to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(maps).all():
        raise ValueError(f"{name} contain NaN or infinite values; fix the explanation first")
    return maps


def as_masks(masks: Tensor | np.ndarray, shape: torch.Size, name: str = "masks") -> Tensor:
    """Return masks as a bool ``(N, H, W)`` tensor on the CPU matching ``shape``.

    Accepts ``(N, H, W)`` or ``(N, 1, H, W)``: bool, integers (non-zero means inside, so 0/255
    images work) or floating point holding only 0 and 1.

    Raises:
        ValueError: when the masks do not match the maps' ``(N, H, W)`` shape, or are floating
            point with other values (NaN, a soft mask, an attribution map given as a mask:
            read as non-zero, they would count as inside wherever they are not exactly 0).
    """
    out = as_tensor(masks, name).detach().cpu()
    if out.dim() == 4 and out.shape[1] == 1:
        out = out[:, 0]
    if tuple(out.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have shape {tuple(shape)} (N, H, W) to match the attributions; "
            f"got {tuple(out.shape)}"
        )
    if out.is_floating_point() and not ((out == 0) | (out == 1)).all():
        raise ValueError(
            f"{name} must be masks (bool, integers, or floats of 0 and 1), but hold other "
            "values (NaN, a soft mask, an attribution map?): threshold them first, e.g. "
            "masks > 0.5, or binarize(maps, 0.5) for an attribution map"
        )
    return out != 0


def check_images(images: Tensor, name: str = "images") -> Tensor:
    """Check that ``images`` is a finite float ``(N, C, H, W)`` batch and return it.

    The same check, and the same messages, as every attribution method
    ([`ctc_plugin.inputs.check_images`][ctc_plugin.inputs.check_images]).

    Raises:
        TypeError: when ``images`` is not a tensor.
        ValueError: when the shape, dtype or values are wrong.
    """
    return shared_check_images(images, name=name)


@target_renamed
def as_targets(target: Tensor | int | list[int] | np.ndarray, n: int) -> Tensor:
    """Return class targets as a long ``(N,)`` tensor (one class is repeated for every image).

    Any Captum target form ([`ctc_plugin.targets.class_indices`][ctc_plugin.targets.class_indices]),
    and NumPy arrays; a tensor or array of ``N`` classes may have any shape (it is flattened).

    Raises:
        ValueError: when the targets are not integer class indices, or their number does not
            match the number of images.
    """
    if isinstance(target, np.ndarray):
        target = torch.from_numpy(target)
    device = target.device if isinstance(target, Tensor) else None
    if isinstance(target, Tensor) and target.numel() == n:
        target = target.reshape(-1)
    return class_indices(target, n, device=device)


#: An explanation method as the evaluation sees it: ``method(model, images, target,
#: feature_mask) -> (N, 1, H, W)`` maps, called by position (``feature_mask`` may be ``None``
#: for methods that do not use features). See `ctc_plugin.harness.methods` for the registry
#: of such functions.
Method = Callable[[nn.Module, Tensor, Tensor, "Tensor | None"], Tensor]


def predict(model: nn.Module, images: Tensor, batch_size: int = 64) -> Tensor:
    """Return the model's predicted classes ``(N,)`` (argmax of the logits, no gradients)."""
    with torch.no_grad():
        return torch.cat([model(chunk).argmax(dim=1) for chunk in images.split(batch_size)])


@target_renamed
def model_targets(
    model: nn.Module, images: Tensor, target: Tensor | int | list[int] | np.ndarray | None
) -> Tensor:
    """The class of each image a metric explains, after refusing a model in training mode.

    The model's predictions where ``target`` is ``None``; else ``target`` (see `as_targets`),
    checked against the number of classes the model gives for the first image (negative ones
    count from the end), so an index out of range is the same ``ValueError`` as in every
    attribution method, not an ``IndexError`` in the middle of a metric.

    Raises:
        TrainingModeError: A BatchNorm, dropout or tracked InstanceNorm in training mode: the
            metric would change its running statistics and depend on the batch size.
        DtypeMismatchError: Images of another floating-point dtype than the model computes in.
        ValueError: Targets that are not integer class indices, or out of range.
    """
    check_eval_mode(model)
    with dtype_mismatch_named(model, images):  # the metric's first call of the model
        if target is None:
            return predict(model, images)
        labels = as_targets(target, len(images))
        with torch.no_grad():
            classes = model(images[:1]).shape[1]
    return resolve_targets(labels.tolist(), torch.empty(len(images), classes)).to(labels.device)


def is_probability_output(output: Tensor) -> bool:
    """Whether a model's ``(N, classes)`` output is already a softmax: rows >= 0 summing to 1.

    Read from the output itself (not from the model's last module), to 1e-4 per row.
    """
    return bool(
        output.dim() == 2
        and output.shape[1] > 1
        and (output >= 0).all()
        and torch.allclose(output.sum(dim=1), torch.ones_like(output[:, 0]), atol=1e-4)
    )


def check_count(value: object, name: str, least: int = 1) -> int:
    """``value`` as an int of at least ``least``, or a ``ValueError`` naming ``name``."""
    if not is_integer(value) or int(value) < least:  # type: ignore[call-overload]
        raise ValueError(f"{name} must be an integer of at least {least}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


@target_renamed
def explain(
    method: Method, model: nn.Module, images: Tensor, target: Tensor, feature_mask: Tensor | None
) -> Tensor:
    """Call ``method`` and check that it returned ``(N, 1, H, W)`` finite maps.

    ``(N, H, W)`` maps (what [`relevance_heatmap`][ctc_plugin.features.relevance_heatmap] and
    the localisation metrics take) are read as ``(N, 1, H, W)``.

    Raises:
        ValueError: naming the wrong shape, or the images whose maps hold NaN or infinity, so
            a broken method fails loudly instead of turning a metric into NaN.
    """
    maps = method(model, images, target, feature_mask)
    n, _, height, width = images.shape
    if isinstance(maps, Tensor) and tuple(maps.shape) == (n, height, width):
        maps = maps.unsqueeze(1)  # one map per image without its channel dimension
    name = getattr(method, "__name__", method)
    if not isinstance(maps, Tensor) or tuple(maps.shape) != (n, 1, height, width):
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(
            f"explanation method {name!r} must return a tensor of shape {(n, 1, height, width)} "
            f"(or {(n, height, width)}), got {shape}"
        )
    maps = maps.detach()
    broken = (~torch.isfinite(maps)).flatten(1).any(dim=1)
    if broken.any():
        raise ValueError(
            f"explanation method {name!r} returned NaN or infinite values for image(s) "
            f"{broken.nonzero().flatten().tolist()} of {n}; fix the method (or its inputs) first"
        )
    return maps
