"""Scenes: what an image contains, how it is sampled from a seed, and how it is drawn.

A [`Scene`][ctc_plugin.datasets.Scene] is a full description of one image (background and objects).
The label and the ground-truth evidence are computed from the scene by
[`label_of`][ctc_plugin.datasets.label_of] and [`render`][ctc_plugin.datasets.render], never stored
beside it, so a test can change the distractors of a scene and check that the label and evidence do
not move.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.ndimage import gaussian_filter

from ctc_plugin.datasets.geometry import (
    CLASS_SHAPES,
    CONTAINER_SHAPES,
    DISTRACTOR_SHAPES,
    HOLE,
    shape_mask,
)
from ctc_plugin.datasets.splits import SPLITS as SPLITS
from ctc_plugin.datasets.splits import check_split as check_split

#: Saturated object colours (RGB in [0, 1]); backgrounds are kept far less saturated.
PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.92, 0.15, 0.12),  # red
    (0.15, 0.78, 0.20),  # green
    (0.15, 0.32, 0.95),  # blue
    (0.96, 0.86, 0.10),  # yellow
    (0.86, 0.18, 0.86),  # magenta
    (0.10, 0.82, 0.86),  # cyan
)
#: The fills an object or background can have.
PATTERNS: tuple[str, ...] = ("solid", "stripes", "checker", "gradient")
#: Small filled shapes that go inside (or beside) a container in the composite split.
CONTENT_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
_MARGIN = 3.0  # minimum gap, in pixels, between the bounding circles of two objects


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene.

    Attributes:
        kind: Shape name (see [`ctc_plugin.datasets.geometry`][ctc_plugin.datasets.geometry]).
        cy: Row of the centre.
        cx: Column of the centre.
        size: Radius of the bounding circle.
        angle: Rotation in radians.
        colour: Index into [`PALETTE`][ctc_plugin.datasets.scene.PALETTE].
        pattern: Texture, one of [`PATTERNS`][ctc_plugin.datasets.scene.PATTERNS].
        depth: How much the texture darkens the colour, in [0, 0.4].
        period: Period of the texture in pixels.
        pattern_angle: Orientation of the texture in radians.
        evidence: True when the object decides the class.
    """

    kind: str
    cy: float
    cx: float
    size: float
    angle: float
    colour: int
    pattern: str
    depth: float
    period: float
    pattern_angle: float
    evidence: bool

    def mask(self, image_shape: tuple[int, int]) -> np.ndarray:
        """Return the exact ``(H, W)`` bool mask of the object."""
        return shape_mask(self.kind, image_shape, self.cy, self.cx, self.size, self.angle)


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw one image.

    Attributes:
        split: ``"shapes"`` or ``"composite"``.
        image_size: Side of the square image in pixels.
        background_seed: Seed of the background texture.
        objects: Evidence objects first, then distractors; instance ids follow this order.
    """

    split: str
    image_size: int
    background_seed: int
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)

    @property
    def distractors(self) -> tuple[SceneObject, ...]:
        """The objects that do not decide the class."""
        return tuple(obj for obj in self.objects if not obj.evidence)

    def with_distractors(self, distractors: tuple[SceneObject, ...]) -> Scene:
        """Return a copy of the scene whose distractors are replaced."""
        evidence = tuple(obj for obj in self.objects if obj.evidence)
        return replace(self, objects=evidence + tuple(distractors))


def label_of(scene: Scene) -> int:
    """Return the class of a scene, computed from its evidence objects only.

    Args:
        scene: The scene.

    Returns:
        For ``"shapes"`` the index of the evidence object's shape in
        `CLASS_SHAPES` (`ctc_plugin.datasets.splits`); for ``"composite"`` 0
        (``"inside"``) when the second evidence object lies entirely within the outline of the first
        (the container) and 1 (``"outside"``) otherwise.
    """
    evidence = [obj for obj in scene.objects if obj.evidence]
    if scene.split == "shapes":
        return CLASS_SHAPES.index(evidence[0].kind)
    container, content = evidence
    shape = (scene.image_size, scene.image_size)
    hull = shape_mask(
        CONTAINER_SHAPES[container.kind],
        shape,
        container.cy,
        container.cx,
        container.size,
        container.angle,
    )
    return 0 if not np.any(content.mask(shape) & ~hull) else 1


def _free(obj_size: float, cy: float, cx: float, placed: list[SceneObject]) -> bool:
    return all(np.hypot(cy - o.cy, cx - o.cx) > obj_size + o.size + _MARGIN for o in placed)


def place(
    rng: np.random.Generator, kind: str, size: float, image_size: int, placed: list[SceneObject]
) -> tuple[float, float] | None:
    """Draw a centre where an object of ``size`` fits inside the image without touching others.

    Returns:
        ``(cy, cx)``, or None when 200 tries found no free spot.
    """
    low, high = size + 1.0, image_size - size - 2.0
    for _ in range(200):
        cy, cx = rng.uniform(low, high, size=2)
        if _free(size, cy, cx, placed):
            return float(cy), float(cx)
    return None


def _object(
    rng: np.random.Generator,
    kind: str,
    size: float,
    centre: tuple[float, float],
    colour: int,
    evidence: bool,
) -> SceneObject:
    return SceneObject(
        kind=kind,
        cy=centre[0],
        cx=centre[1],
        size=size,
        angle=float(rng.uniform(0, 2 * np.pi)),
        colour=colour,
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        depth=float(rng.uniform(0.1, 0.4)),
        period=float(rng.uniform(3.0, 7.0)),
        pattern_angle=float(rng.uniform(0, np.pi)),
        evidence=evidence,
    )


def sample_distractor(
    rng: np.random.Generator, image_size: int, placed: list[SceneObject]
) -> SceneObject | None:
    """Draw one distractor (a bar or a thin ellipse, any colour) that fits beside ``placed``."""
    scale = image_size / 96
    kind = DISTRACTOR_SHAPES[rng.integers(len(DISTRACTOR_SHAPES))]
    size = float(rng.uniform(8, 14) * scale)
    centre = place(rng, kind, size, image_size, placed)
    if centre is None:
        return None
    return _object(rng, kind, size, centre, int(rng.integers(len(PALETTE))), evidence=False)


def _sample_shape(
    rng: np.random.Generator, label: int, image_size: int
) -> list[SceneObject] | None:
    """Draw the one evidence object of a ``"shapes"`` scene (its shape is the class)."""
    kind, size = CLASS_SHAPES[label], float(rng.uniform(13, 22) * (image_size / 96))
    colour = int(rng.integers(len(PALETTE)))
    centre = place(rng, kind, size, image_size, [])
    return None if centre is None else [_object(rng, kind, size, centre, colour, True)]


def _sample_relation(
    rng: np.random.Generator, label: int, image_size: int
) -> list[SceneObject] | None:
    """Draw the container and the content of a ``"composite"`` scene, inside or beside."""
    scale = image_size / 96
    kind = tuple(CONTAINER_SHAPES)[rng.integers(len(CONTAINER_SHAPES))]
    size = float(rng.uniform(17, 23) * scale)
    centre = place(rng, kind, size, image_size, [])
    if centre is None:
        return None
    colours = rng.choice(len(PALETTE), size=2, replace=False)
    container = _object(rng, kind, size, centre, int(colours[0]), True)
    content_kind = CONTENT_SHAPES[rng.integers(len(CONTENT_SHAPES))]
    content_size = float(rng.uniform(5, 7) * scale)
    if label == 0:  # anywhere inside the circle inscribed in the hole
        hole = HOLE * size * (1.0 if kind == "hoop" else np.sqrt(0.5))
        reach = max(0.0, hole - content_size - 1.0) * np.sqrt(rng.uniform())
        direction = rng.uniform(0, 2 * np.pi)
        inner = (centre[0] + reach * np.sin(direction), centre[1] + reach * np.cos(direction))
    else:
        inner = place(rng, content_kind, content_size, image_size, [container])
        if inner is None:
            return None
    content = _object(rng, content_kind, content_size, inner, int(colours[1]), True)
    return [container, content]


def sample_scene(rng: np.random.Generator, split: str, image_size: int) -> tuple[Scene, int]:
    """Draw a random scene of ``split`` with a uniformly drawn label.

    Args:
        rng: The random generator (the only source of randomness).
        split: ``"shapes"`` or ``"composite"``.
        image_size: Side of the square image; 32 or more.

    Returns:
        The scene and its label (equal to ``label_of(scene)``).
    """
    classes = check_split(split)
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    label = int(rng.integers(len(classes)))
    while True:  # resample in the (rare) case the objects do not fit
        placed = (
            _sample_shape(rng, label, image_size)
            if split == "shapes"
            else _sample_relation(rng, label, image_size)
        )
        if placed is not None:
            for _ in range(int(rng.integers(1, 4))):
                distractor = sample_distractor(rng, image_size, placed)
                if distractor is not None:
                    placed.append(distractor)
            if not placed[-1].evidence:  # at least one distractor fitted
                break
    scene = Scene(split, image_size, int(rng.integers(2**31)), tuple(placed))
    return scene, label


def render_background(scene: Scene) -> np.ndarray:
    """Draw the textured, low-saturation background of a scene as an ``(H, W, 3)`` array."""
    rng = np.random.default_rng(scene.background_seed)
    n = scene.image_size
    base = rng.uniform(0.25, 0.75) + rng.uniform(-0.06, 0.06, size=3)
    smooth = gaussian_filter(rng.normal(size=(n, n)), sigma=rng.uniform(2.0, 6.0))
    smooth *= rng.uniform(0.05, 0.15) / (smooth.std() + 1e-8)
    rows, cols = np.mgrid[:n, :n]
    theta, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
    stripes = rng.uniform(0, 0.06) * np.sin(
        2 * np.pi * (rows * np.sin(theta) + cols * np.cos(theta)) / period
    )
    grain = rng.normal(scale=0.02, size=(n, n, 3))
    image = base + (smooth + stripes)[..., None] + grain
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _shading(obj: SceneObject, n: int) -> np.ndarray:
    """Return the texture factor of an object, in [1 - depth, 1], as an ``(H, W)`` array."""
    rows, cols = np.mgrid[:n, :n].astype(np.float32)
    along = rows * np.sin(obj.pattern_angle) + cols * np.cos(obj.pattern_angle)
    if obj.pattern == "stripes":
        pattern = (np.floor(along / obj.period) % 2).astype(np.float32)
    elif obj.pattern == "checker":
        pattern = ((np.floor(rows / obj.period) + np.floor(cols / obj.period)) % 2).astype(
            np.float32
        )
    elif obj.pattern == "gradient":
        centre = obj.cy * np.sin(obj.pattern_angle) + obj.cx * np.cos(obj.pattern_angle)
        pattern = np.clip((along - centre + obj.size) / (2 * obj.size), 0, 1)
    else:
        pattern = np.zeros((n, n), np.float32)
    return 1.0 - obj.depth * pattern


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw a scene.

    Args:
        scene: The scene to draw.

    Returns:
        ``(image, evidence, instances)``: the ``(3, H, W)`` float32 image in [0, 1], the
        ``(H, W)`` bool mask of the evidence objects, and the ``(H, W)`` int64 partition
        (0 = background, object ``i`` of ``scene.objects`` has id ``i + 1``).
    """
    n = scene.image_size
    image = render_background(scene)
    instances = np.zeros((n, n), np.int64)
    for index, obj in enumerate(scene.objects, start=1):
        mask = obj.mask((n, n))
        fill = np.asarray(PALETTE[obj.colour], np.float32) * _shading(obj, n)[..., None]
        image[mask] = fill[mask]
        instances[mask] = index  # a later object hides an earlier one where they overlap
    evidence_ids = [i for i, obj in enumerate(scene.objects, start=1) if obj.evidence]
    evidence = np.isin(instances, evidence_ids)
    return np.ascontiguousarray(image.transpose(2, 0, 1)), evidence, instances
