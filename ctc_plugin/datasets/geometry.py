"""Exact pixel masks of the shapes the synthetic data sets draw.

Every shape is described by a centre, a size (the radius of the circle that bounds it) and a
rotation, and rasterised without anti-aliasing, so the mask is exactly the set of pixels the
object paints.
"""

from __future__ import annotations

import numpy as np
from skimage.draw import polygon2mask

from ctc_plugin.datasets.splits import CLASS_SHAPES as CLASS_SHAPES

#: Shapes used only for distractors; none of them can be mistaken for a class shape.
DISTRACTOR_SHAPES: tuple[str, ...] = ("bar", "ellipse")
#: Hollow containers of the composite split, and the filled shape each one's outline bounds.
CONTAINER_SHAPES: dict[str, str] = {"hoop": "circle", "frame": "square"}
#: How far the hole of a container reaches, as a fraction of its size.
HOLE = 0.72


def _polygon(
    shape: tuple[int, int], cy: float, cx: float, radii: np.ndarray, angles: np.ndarray
) -> np.ndarray:
    """Rasterise the polygon with vertices at the given polar coordinates around (cy, cx)."""
    vertices = np.stack([cy + radii * np.sin(angles), cx + radii * np.cos(angles)], axis=1)
    return polygon2mask(shape, vertices)


def _regular(n: int, angle: float) -> np.ndarray:
    """Return the angles of ``n`` evenly spaced vertices starting at ``angle``."""
    return angle + np.arange(n) * (2 * np.pi / n)


def shape_mask(
    kind: str,
    image_shape: tuple[int, int],
    cy: float,
    cx: float,
    size: float,
    angle: float = 0.0,
) -> np.ndarray:
    """Return the boolean mask of one shape.

    Args:
        kind: One of `CLASS_SHAPES` (`ctc_plugin.datasets.splits`) or
            [`DISTRACTOR_SHAPES`][ctc_plugin.datasets.scene.DISTRACTOR_SHAPES].
        image_shape: ``(H, W)`` of the mask.
        cy: Row of the centre.
        cx: Column of the centre.
        size: Radius of the circle bounding the shape, in pixels (for a cross, the half-length
            of an arm: its arm corners reach 1.06 times further).
        angle: Rotation in radians.

    Returns:
        A ``(H, W)`` bool array, True on the pixels the shape covers.

    Raises:
        ValueError: If ``kind`` is not a known shape.
    """
    rows, cols = np.ogrid[: image_shape[0], : image_shape[1]]
    distance = np.hypot(rows - cy, cols - cx)
    if kind == "circle":
        return distance <= size
    if kind == "ring":
        return (distance <= size) & (distance >= 0.55 * size)
    if kind == "hoop":
        return (distance <= size) & (distance > HOLE * size)
    if kind in ("square", "frame"):
        outer = _polygon(image_shape, cy, cx, np.full(4, size), _regular(4, angle))
        if kind == "square":
            return outer
        return outer & ~_polygon(image_shape, cy, cx, np.full(4, HOLE * size), _regular(4, angle))
    if kind == "triangle":
        return _polygon(image_shape, cy, cx, np.full(3, size), _regular(3, angle))
    if kind == "star":
        radii = np.tile([size, 0.45 * size], 5)
        return _polygon(image_shape, cy, cx, radii, _regular(10, angle))
    if kind == "cross":
        arm = 0.34 * size  # half the width of an arm
        # Corners of a plus sign in its own frame, then rotated.
        u = np.array([arm, arm, size, size, arm, arm, -arm, -arm, -size, -size, -arm, -arm])
        v = np.array([size, arm, arm, -arm, -arm, -size, -size, -arm, -arm, arm, arm, size])
        return _polygon(image_shape, cy, cx, np.hypot(u, v), np.arctan2(v, u) + angle)
    if kind == "bar":
        half_width = max(1.2, 0.14 * size)
        u = np.array([size, size, -size, -size])
        v = np.array([half_width, -half_width, -half_width, half_width])
        return _polygon(image_shape, cy, cx, np.hypot(u, v), np.arctan2(v, u) + angle)
    if kind == "ellipse":
        t = _regular(32, 0.0)
        u, v = size * np.cos(t), 0.3 * size * np.sin(t)
        return _polygon(image_shape, cy, cx, np.hypot(u, v), np.arctan2(v, u) + angle)
    raise ValueError(f"unknown shape {kind!r}; expected one of {CLASS_SHAPES + DISTRACTOR_SHAPES}")
