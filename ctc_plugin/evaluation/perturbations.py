"""Image perturbations for the invariance/sensitivity protocol, done correctly.

The reference CTC evaluation perturbed 8-bit images and let uniform noise wrap around (a dark
pixel plus negative noise became bright) and scaled its Gaussian noise so that "small" noise was
nearly a no-op and "big" noise a brightness shift. Here every perturbation works on float images
in [0, 1] and clips the result back into [0, 1]. Noise is drawn from an explicit
``torch.Generator`` so runs repeat exactly: on the generator's device, then moved to the images
(a CPU generator, or none, gives the same noise for a seed wherever the images are; a CUDA
generator draws on its GPU, as ``torch.randn`` would).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from ctc_plugin.evaluation.arguments import check_images

__all__ = [
    "SEVERITIES",
    "gaussian_blur",
    "gaussian_noise",
    "uniform_noise",
    "perturb",
    "severity_value",
]

Kind = Literal["blur", "gaussian", "uniform"]

#: Named severity levels: blur sigma in pixels, Gaussian noise standard deviation, uniform noise
#: half-width (all in units of the [0, 1] intensity range). ``blur/small`` has the sigma of the
#: reference's 5x5 OpenCV blur (1.1, what OpenCV derives for that size), on `gaussian_blur`'s
#: 9x9 kernel (OpenCV's 5x5 blur uses a fixed binomial kernel when it derives sigma itself);
#: ``uniform`` small/big are the reference's +-2% and +-30%.
SEVERITIES: dict[str, dict[str, float]] = {
    "blur": {"small": 1.1, "big": 2.5},
    "gaussian": {"small": 0.02, "big": 0.15},
    "uniform": {"small": 0.02, "big": 0.30},
}


def check_unit_range(images: Tensor) -> Tensor:
    """Check that ``images`` is a finite float image batch with values in [0, 1]; return it.

    Raises:
        ValueError: Values outside [0, 1] (normalised images), or as `check_images`.
    """
    images = check_images(images)
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            "perturbations work on images in [0, 1]; got values in "
            f"[{float(images.min()):.3g}, {float(images.max()):.3g}]. Perturb before normalising."
        )
    return images


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Blur with a Gaussian kernel of standard deviation ``sigma`` pixels (size 2*ceil(3 sigma)+1).

    Borders are reflected, so the image keeps its mean brightness. Reflection reaches at most
    one image side less a pixel, so on images smaller than the kernel it is cut to
    ``2 * (side - 1) + 1`` (the Gaussian's tails beyond the image are left out).

    Raises:
        ValueError: ``sigma`` is not positive.
    """
    images = check_unit_range(images)
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    side = min(images.shape[-2:])
    size = min(2 * math.ceil(3 * sigma) + 1, 2 * (side - 1) + 1)
    return TF.gaussian_blur(images, kernel_size=[size, size], sigma=[sigma, sigma]).clamp(0, 1)


def _noise(
    draw: Callable[..., Tensor], images: Tensor, generator: torch.Generator | None
) -> Tensor:
    """``draw`` (``torch.randn``, ``torch.rand``) shaped like ``images``, on their device.

    Drawn on the generator's device (the CPU without one), so a CPU generator gives the same
    noise whatever device the images are on, and a CUDA generator is used where it draws.
    """
    device = torch.device("cpu") if generator is None else generator.device
    noise = draw(images.shape, generator=generator, dtype=images.dtype, device=device)
    return noise.to(images.device)


def gaussian_noise(images: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """Add i.i.d. Gaussian noise of standard deviation ``std`` and clip to [0, 1].

    ``generator`` (CPU or CUDA) draws the noise on its own device; see the module's notes.

    Raises:
        ValueError: ``std`` is negative.
    """
    images = check_unit_range(images)
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    return (images + std * _noise(torch.randn, images, generator)).clamp(0, 1)


def uniform_noise(
    images: Tensor, amplitude: float, generator: torch.Generator | None = None
) -> Tensor:
    """Add i.i.d. noise uniform in [-amplitude, amplitude] and clip to [0, 1] (no wrap-around).

    ``generator`` (CPU or CUDA) draws the noise on its own device; see the module's notes.

    Raises:
        ValueError: ``amplitude`` is negative.
    """
    images = check_unit_range(images)
    if amplitude < 0:
        raise ValueError(f"amplitude must be >= 0, got {amplitude}")
    noise = _noise(torch.rand, images, generator) * 2 - 1
    return (images + amplitude * noise).clamp(0, 1)


def severity_value(kind: str, severity: str | float) -> float:
    """The parameter of a perturbation: a `SEVERITIES` level's, or the number given.

    Raises:
        ValueError: An unknown kind or level, or a severity that is neither a level name nor a
            finite number (> 0 for a blur's sigma, >= 0 for noise).
    """
    if kind not in SEVERITIES:
        raise ValueError(f"kind must be one of {sorted(SEVERITIES)}, got {kind!r}")
    levels = SEVERITIES[kind]
    if isinstance(severity, str):
        if severity not in levels:
            raise ValueError(f"severity for {kind!r} must be one of {sorted(levels)} or a number")
        return levels[severity]
    if isinstance(severity, bool) or not isinstance(severity, numbers.Real):
        raise ValueError(
            f"severity for {kind!r} must be one of {sorted(levels)} or a number, got {severity!r}"
        )
    value = float(severity)
    least = "> 0" if kind == "blur" else ">= 0"  # a blur of sigma 0 has no kernel
    if not math.isfinite(value) or value < 0 or (kind == "blur" and value == 0):
        raise ValueError(f"severity for {kind!r} must be a finite number {least}, got {severity!r}")
    return value


def perturb(
    images: Tensor,
    kind: Kind,
    severity: str | float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Apply one perturbation at a named (`SEVERITIES`) or numeric severity.

    Args:
        images: ``(N, C, H, W)`` float images in [0, 1].
        kind: ``"blur"``, ``"gaussian"`` or ``"uniform"``.
        severity: A level name from `SEVERITIES` (``"small"``, ``"big"``) or the parameter
            itself (sigma, standard deviation or half-width).
        generator: Random generator for the noise kinds, on the CPU or a CUDA device (the
            noise is drawn there and moved to the images).

    Returns:
        The perturbed images, float, in [0, 1].
    """
    value = severity_value(kind, severity)
    if kind == "blur":
        return gaussian_blur(images, value)
    if kind == "gaussian":
        return gaussian_noise(images, value, generator)
    return uniform_noise(images, value, generator)
