"""Max-sensitivity (Yeh et al., 2019) and the cost of an explanation: time and peak memory."""

from __future__ import annotations

import ctypes
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ctc_plugin.evaluation.arguments import (
    Method,
    check_count,
    check_images,
    explain,
    model_targets,
    target_renamed,
)
from ctc_plugin.inputs import is_finite_number

__all__ = ["max_sensitivity", "Cost", "measure_cost"]


@target_renamed
def max_sensitivity(
    method: Method,
    model: nn.Module,
    images: Tensor,
    target: Tensor | int | list[int] | None = None,
    feature_mask: Tensor | None = None,
    radius: float = 0.02,
    n_samples: int = 8,
    normalise: bool = True,
    seed: int = 0,
) -> Tensor:
    """Largest change of the explanation under uniform input noise in an L-infinity ball.

    ``max_j ||a(x + d_j) - a(x)|| / ||a(x)||`` (Frobenius norms) with ``d_j`` uniform in
    ``[-radius, radius]``, as ``captum.metrics.sensitivity_max`` computes it (a map of norm 0
    divides by 1); ``normalise=False`` drops the denominator. The same classes and features
    are used for the noisy inputs. Noisy inputs are not clipped (as in Captum and Quantus).

    Args:
        method: ``method(model, images, target, feature_mask)`` returning ``(N, 1, H, W)`` maps.
        model: The explained model, in eval mode.
        images: ``(N, C, H, W)`` float images.
        target: One class per image, one for all, or ``None`` for the predicted classes.
        feature_mask: Passed on to ``method`` for the clean and the noisy inputs alike.
        radius: Half-width of the uniform noise.
        n_samples: Noisy copies per image.
        normalise: Divide by the clean map's norm.
        seed: Seed of the noise.

    Returns:
        ``(N,)`` float64 tensor (0 = the explanation never moved).

    Raises:
        ValueError: Images that are not a finite float batch (8-bit images would turn the
            noise into 0 or wrap around), a radius that is not a finite number >= 0, or
            ``n_samples`` / ``seed`` that are not integers of at least 1 / 0.
    """
    images = check_images(images)
    if not (is_finite_number(radius) and radius >= 0):
        raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
    n_samples = check_count(n_samples, "n_samples")
    seed = check_count(seed, "seed", least=0)
    labels = model_targets(model, images, target)
    reference = explain(method, model, images, labels, feature_mask).double()
    generator = torch.Generator().manual_seed(seed)
    worst = torch.zeros(len(images), dtype=torch.float64)
    for _ in range(n_samples):
        noise = (torch.rand(images.shape, generator=generator) * 2 - 1) * radius
        maps = explain(method, model, images + noise.to(images), labels, feature_mask).double()
        worst = torch.maximum(worst, (maps - reference).flatten(1).norm(dim=1).cpu())
    if normalise:
        scale = reference.flatten(1).norm(dim=1).cpu()
        worst = worst / scale.where(scale != 0, 1.0)
    return worst


@dataclass(frozen=True)
class Cost:
    """Cost of explaining a batch.

    Attributes:
        seconds_per_image: Wall-clock seconds divided by the number of images.
        peak_memory_mib: Peak memory above the level before the call, in MiB: CUDA allocator
            peak on GPU; on Linux CPU the growth of the process' peak resident set (``VmHWM``,
            reset through ``/proc/self/clear_refs`` after ``malloc_trim``), which includes
            allocator overhead and first-call caches (warm a method up before measuring it);
            NaN where neither is available.
    """

    seconds_per_image: float
    peak_memory_mib: float


_STATUS = Path("/proc/self/status")


def _rss_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in {_STATUS}")


def _reset_peak_rss() -> bool:
    """Return freed heap memory to the OS, then reset the peak resident set to the current one."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # else freed-but-kept pages hide new peaks
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@target_renamed
def measure_cost(
    method: Method,
    model: nn.Module,
    images: Tensor,
    target: Tensor | int | list[int] | None = None,
    feature_mask: Tensor | None = None,
) -> tuple[Tensor, Cost]:
    """Explain once and measure time per image and peak memory.

    Peak memory is the process's resident memory above its level before the call (on a GPU, the
    device's allocated memory); memory a method keeps between its calls counts only where the
    call allocates it.

    Args:
        method: ``method(model, images, target, feature_mask)`` returning ``(N, 1, H, W)`` maps.
        model: The explained model, in eval mode.
        images: ``(N, C, H, W)`` float images.
        target: One class per image, one for all, or ``None`` for the predicted classes.
        feature_mask: Passed on to ``method`` (segment methods need one).

    Returns:
        The maps ``(N, 1, H, W)`` and their `Cost`.

    Raises:
        TrainingModeError: A model with BatchNorm or dropout in training mode (explaining it
            would update its statistics), as every metric that runs the model.
        ValueError: Images that are not a finite float batch, or targets out of range.
    """
    images = check_images(images)
    labels = model_targets(model, images, target)
    cuda = images.is_cuda
    if cuda:
        torch.cuda.synchronize(images.device)
        torch.cuda.reset_peak_memory_stats(images.device)
        before = torch.cuda.memory_allocated(images.device)
    else:
        tracked = _reset_peak_rss()
        before = _rss_kib("VmRSS") * 1024 if tracked else 0
    start = time.perf_counter()
    maps = explain(method, model, images, labels, feature_mask)
    if cuda:
        torch.cuda.synchronize(images.device)
    seconds = time.perf_counter() - start
    if cuda:
        peak = (torch.cuda.max_memory_allocated(images.device) - before) / 2**20
    elif tracked:
        peak = max(_rss_kib("VmHWM") * 1024 - before, 0) / 2**20
    else:
        peak = float("nan")
    return maps, Cost(seconds_per_image=seconds / len(images), peak_memory_mib=peak)
