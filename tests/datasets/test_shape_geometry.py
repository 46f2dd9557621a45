import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin.datasets.geometry import HOLE, shape_mask

# Analytic areas for a bounding radius r (independent of the rasteriser).
AREAS = {
    "circle": lambda r: math.pi * r**2,
    "ring": lambda r: math.pi * r**2 * (1 - 0.55**2),
    "hoop": lambda r: math.pi * r**2 * (1 - HOLE**2),
    "square": lambda r: 2 * r**2,
    "frame": lambda r: 2 * r**2 * (1 - HOLE**2),
    "triangle": lambda r: 3 * math.sqrt(3) / 4 * r**2,
    "star": lambda r: 5 * r * (0.45 * r) * math.sin(math.pi / 5),
    "cross": lambda r: 8 * r * (0.34 * r) - 4 * (0.34 * r) ** 2,
    "bar": lambda r: 2 * r * 2 * max(1.2, 0.14 * r),
    "ellipse": lambda r: math.pi * r * 0.3 * r,
}


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(sorted(AREAS)),
    radius=st.floats(25, 40),
    angle=st.floats(0, 2 * math.pi),
    offset=st.tuples(st.floats(-5, 5), st.floats(-5, 5)),
)
def test_mask_area_and_extent_match_the_geometry(kind, radius, angle, offset):
    cy, cx = 50 + offset[0], 50 + offset[1]
    mask = shape_mask(kind, (100, 100), cy, cx, radius, angle)
    # Thin outlines (bars, square frames) lose a rasterisation band along their long edges.
    tolerance = 0.12 if kind in ("bar", "frame") else 0.03
    assert mask.sum() == pytest.approx(AREAS[kind](radius), rel=tolerance)
    rows, cols = np.nonzero(mask)
    # Every pixel lies within the bounding circle (plus half a pixel of rasterisation); the
    # corners of a cross's arms reach sqrt(1 + 0.34^2) times its size.
    extent = radius * (math.hypot(1, 0.34) if kind == "cross" else 1.0)
    assert np.hypot(rows - cy, cols - cx).max() <= extent + 0.75


def test_rotation_turns_the_mask():
    def spans(angle):
        rows, cols = np.nonzero(shape_mask("bar", (64, 64), 32, 32, 20, angle))
        return np.ptp(rows), np.ptp(cols)

    rows, cols = spans(0.0)  # angle 0 points along the columns
    assert cols >= 38 and rows <= 6
    assert spans(math.pi / 2) == (cols, rows)


def test_unknown_shape_is_an_error():
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        shape_mask("hexagon", (10, 10), 5, 5, 3)
