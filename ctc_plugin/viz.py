"""Figures: segment scores on an image, several methods side by side.

[`plot_segment_scores`][ctc_plugin.viz.plot_segment_scores] draws the image with its segments,
then one panel per method: each segment painted with its score (or a method's per-pixel map),
on a diverging colour map whose range is symmetric around zero (``vmin = -vmax``), so white is
always 0, red positive and blue negative, and the colour bar is in the method's own units.

Captum's ``visualize_image_attr`` and Zennit's ``imgify`` were considered: both rescale the map
(Captum to its 98th percentile, Zennit to its extremes) and so cannot show a colour bar in the
scores' units, which is what tells CTC's additive scores apart from a [0, 1] mask. The overlay
here is plain matplotlib; the segment outlines are scikit-image's ``mark_boundaries``.

Figures are made with matplotlib's object API (`new_figure`), not pyplot: drawing one leaves
the matplotlib backend and pyplot's open figures of the caller as they were, keeps nothing
alive after the figure is dropped, and two threads can draw and save figures at once.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ctc_plugin.wording import counted

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "COLOUR_BAR_LABELS",
    "MAX_PIXELS",
    "MIN_DPI",
    "PANELS_PER_ROW",
    "PANEL_SIDE",
    "figure_width",
    "new_figure",
    "new_rows_figure",
    "panel_width",
    "plot_segment_scores",
    "save_figure",
    "wrap_to_width",
]

#: Height of one panel in inches (the width of a square image's panel).
PANEL_SIDE = 3.6

#: Most panels in one row of a figure `plot_segment_scores` makes (the image and four methods);
#: more methods continue on further rows.
PANELS_PER_ROW = 5

#: Width to height of the widest and of the narrowest panel: a panorama is drawn as a strip in
#: a panel this wide (its titles stay readable), a tall image in one this narrow.
PANEL_ASPECT_RANGE = (0.6, 3.0)

#: Inches beside a method's panel for its colour bar, tick labels and label.
COLOUR_BAR_WIDTH = 1.0

#: The label of a panel's colour bar, by whether it shows a per-pixel map: what one colour is.
COLOUR_BAR_LABELS = {False: "score of the segment (0 white)", True: "value of the pixel (0 white)"}

#: Drawn pixels of the longer side of the image's panel, at least: a smaller image is drawn
#: with each pixel repeated, so that the segments' outlines (a drawn pixel wide) stay thin.
OUTLINED_SIDE = 512

#: The lowest ``dpi`` `save_figure` takes: below about 5, FreeType cannot size the text at all.
MIN_DPI = 10

#: The most pixels `save_figure` writes a figure in: matplotlib renders its images in float64,
#: 32 bytes a pixel (about 3 GiB at this size); far more fails after minutes, out of memory.
MAX_PIXELS = 100_000_000


def panel_width(height: int, width: int, side: float = PANEL_SIDE) -> float:
    """Width in inches of a figure panel showing a ``height x width`` image, ``side`` high.

    The image's aspect ratio clamped to `PANEL_ASPECT_RANGE`: a very wide image (a
    2000 x 100 panorama) gets a panel three times as wide as high, not twenty, so that a
    figure of several panels stays a readable size; matplotlib scales the image into it.
    """
    low, high = PANEL_ASPECT_RANGE
    return side * min(max(width / max(height, 1), low), high)


def figure_width(width: float, methods: int) -> float:
    """Width in inches of a figure of the image and ``methods`` panels, each ``width`` wide.

    ``width`` is the image's `panel_width`; each method's panel also has its colour bar and
    tick labels beside it. Drawn with constrained layout and equal column ratios, every panel
    then shows its image at the same size, without a gap after the image's column.
    """
    return width * (1 + methods) + COLOUR_BAR_WIDTH * methods


def new_figure(rows: int, columns: int, size: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A ``size`` inches figure of ``rows x columns`` axes with constrained layout.

    Made with matplotlib's object API (``Figure``), not pyplot: no backend is chosen or
    switched (a caller's interactive or notebook backend stays), pyplot does not hold on to it
    (no "More than 20 figures" warning; it is freed once dropped), and no global state is
    shared with another thread drawing a figure. Its canvas is Agg's, so that
    ``figure.canvas.draw()`` lays it out and renders it, as pyplot's would.

    Returns:
        The figure and its axes, a ``(rows, columns)`` array.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns, squeeze=False)


def new_rows_figure(
    widths: Sequence[float], methods: int, title_height: float = 0.4
) -> tuple[Figure, list[list[Axes]]]:
    """A figure of one row per image: its panel, then ``methods`` panels, each its own width.

    ``widths`` are the images' `panel_width`. A row narrower than the widest is drawn from the
    left at its own width (a `figure_width` subfigure): in one grid of equal columns, the
    panels of a portrait photo under a panorama's floated apart, the photo alone on the left
    and its maps far to the right. Made like `new_figure`, without pyplot.

    Returns:
        The figure and each row's axes, the image's first.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    total = figure_width(max(widths), methods)
    figure = Figure(figsize=(total, PANEL_SIDE * len(widths) + title_height), layout="constrained")
    FigureCanvasAgg(figure)
    rows = []
    for place, width in zip(figure.subfigures(len(widths), 1, squeeze=False)[:, 0], widths):
        own = figure_width(width, methods)
        if own < 0.99 * total:
            place = place.subfigures(1, 2, width_ratios=[own, total - own])[0]
        rows.append(list(place.subplots(1, 1 + methods, squeeze=False)[0]))
    return figure, rows


def wrap_to_width(text: str, inches: float, fontsize: float | str = "medium") -> str:
    """``text`` broken into lines at most ``inches`` wide in matplotlib's font at ``fontsize``.

    Lines break after a space, ``_``, ``-``, ``.``, ``/`` or ``,``, and inside a word longer than
    a line (a long file name), so that a title stays over its own panel: matplotlib neither
    wraps a title nor keeps it from running over its neighbour's or past the figure's edge.
    Widths are measured with the font's metrics (no renderer needed), with a small margin for
    the renderer's hinting.

    Args:
        text: The title; its own line breaks are kept.
        inches: The width a line may take.
        fontsize: Points, or a matplotlib size name (``"large"``, a title's default).
    """
    import re

    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    font = FontProperties(size=fontsize)
    limit = 0.92 * inches * 72  # points

    def fits(piece: str) -> bool:
        width = text_to_path.get_text_width_height_descent(piece, font, ismath=False)[0]
        return width <= limit

    lines: list[str] = []
    for given in text.split("\n"):
        line = ""
        for word in re.split(r"(?<=[ _\-./,])", given):
            if line and not fits(line + word):
                lines.append(line.rstrip())
                line = ""
            line += word
            while len(line) > 1 and not fits(line):  # a word longer than a line
                cut = max((n for n in range(1, len(line)) if fits(line[:n])), default=1)
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line.rstrip())
    return "\n".join(lines)


def plot_segment_scores(
    image: torch.Tensor | np.ndarray,
    feature_mask: torch.Tensor | np.ndarray,
    scores: Any,
    *,
    ids: Sequence[int] | torch.Tensor | np.ndarray | None = None,
    top_k: int = 5,
    evidence: torch.Tensor | np.ndarray | None = None,
    title: str | None = None,
    cmap: str = "bwr",
    alpha: float = 0.7,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Draw segment scores over an image; several methods side by side.

    The first panel is the image with the segment outlines (and the ``evidence`` contour when
    given). Then one panel per method (`PANELS_PER_ROW` panels to a row): the grayscale image
    under the method's values, on ``cmap`` with a symmetric range ``[-m, m]`` (``m`` the
    largest finite absolute value of that panel), with a colour bar in the values' units,
    labelled with what one colour is (a segment's score, or a pixel's value of a map), and
    the ranks of the ``top_k`` highest scoring segments written inside them (at the pixel
    farthest from their border). Tied scores share a rank (1, 2, 2, 4); a tie that crosses the
    ``top_k`` cut gets no rank (a panel of all-equal scores gets none). A NaN or infinite score
    gets no rank; NaN is left blank, an infinite score drawn at the range's end. What the
    colours cannot tell is written under the panel: how many segments (pixels, of a map) are
    NaN or infinite, segments without a score, scores of ids the mask does not hold (not
    drawn), and scores that are all 0 (drawn on the range ``[-1, 1]``).

    Args:
        image: ``(3, H, W)`` (or ``(1, 3, H, W)``) RGB in [0, 1]: what the segmenter saw, e.g.
            ``PreparedImage.pixels``; ``(1, H, W)`` or ``(H, W)`` for a grayscale image.
        feature_mask: ``(H, W)`` integer segment ids (``(1, H, W)`` and ``(1, 1, H, W)`` too;
            ``(C, H, W)`` or ``(1, C, H, W)`` of the same ids in every channel, as Captum's
            masks are often kept, is that one map).
        scores: One method's result or ``{panel title: result}`` for several. A result is
            ``FeatureScores`` (CTC's, first example), a mapping ``{segment id: score}``, a pair
            ``(ids, scores)`` (what `segment_means` returns), a 1-D
            sequence of scores aligned with ``ids`` (default: the mask's sorted ids), or a
            per-pixel map ``(H, W)`` (``(1, H, W)``, ``(1, 1, H, W)``, or ``(C, H, W)`` whose
            channels are summed, as Captum's visualisation does), drawn as it is; its segments
            are ranked by their mean. Feature methods (CTC, ``FeatureAblation``, ``Lime``)
            repeat each score in every channel: pass one channel, ``attributions[0, 0]``.
        ids: The segment id of each score when ``scores`` holds 1-D sequences.
        top_k: How many of each panel's highest segments get their rank written (0: none).
        evidence: Optional ``(H, W)`` boolean ground truth, drawn as a contour on the image.
        title: Figure title (ignored when drawing into given ``axes``).
        cmap: A diverging matplotlib colour map.
        alpha: Opacity of the scores over the grayscale image.
        axes: Draw into these axes (one for the image, then one per method) instead of a new
            figure, e.g. a row of a larger grid.

    Returns:
        The matplotlib figure: a new one made with `new_figure`, not registered with pyplot
        (write it with [`save_figure`][ctc_plugin.viz.save_figure] or ``figure.savefig``; a
        notebook shows it as a cell's value; ``plt.show()``, ``plt.savefig`` and
        ``plt.gcf()`` do not know it: draw into ``axes`` of ``plt.subplots`` for those), or
        the figure of the ``axes`` given.

    Raises:
        ValueError: If the shapes do not fit together, ``axes`` has the wrong length,
            ``top_k`` is negative, the image's values lie beyond [0, 1] by more than a
            resize's overshoot, 0.25 (a normalised or 8-bit image would be drawn clipped),
            or ``FeatureScores`` whose first example's feature mask is not ``feature_mask``
            (another example's scores are ``dict(scores.ranked(i))``).

    Examples:
        >>> from ctc_plugin.viz import plot_segment_scores, save_figure
        >>> figure = plot_segment_scores(image.pixels[0], mask[0, 0],
        ...                              {"CTC": scores, "Grad-CAM": gradcam_map[0, 0]})
        >>> save_figure(figure, "explanation.png")
    """
    import matplotlib

    from ctc_plugin.features.partition import segment_ids

    if top_k < 0:
        raise ValueError(f"top_k must be 0 (no ranks written) or more, got {top_k}")
    rgb = _numpy_image(image)
    shape = rgb.shape[:2]
    segments = segment_ids(_numpy_map(feature_mask, shape, "feature_mask"))
    panels = dict(scores) if _is_panel_mapping(scores) else {"scores": scores}
    painted = {name: _paint(value, segments, ids, name) for name, value in panels.items()}

    own_figure = axes is None
    if axes is None:
        columns = min(1 + len(panels), PANELS_PER_ROW)
        rows = -(-(1 + len(panels)) // columns)
        figure, created = new_figure(
            rows,
            columns,
            (figure_width(panel_width(*shape), columns - 1), rows * (PANEL_SIDE + 0.6)),
        )
        axes = list(created.flat)
        for unused in axes[1 + len(panels) :]:  # the last row's empty places
            unused.remove()
        axes = axes[: 1 + len(panels)]
    else:
        axes = list(axes)
        figure = axes[0].figure
    if len(axes) != 1 + len(panels):
        raise ValueError(f"axes must hold {1 + len(panels)} axes (image + one per method)")

    def set_title(axis: Axes, text: str) -> None:  # wrapped to stay over its own panel
        inches = min(panel_width(*shape), _cell_width(axis))
        axis.set_title(wrap_to_width(text, inches, matplotlib.rcParams["axes.titlesize"]))

    height, width = shape  # the outlined image may be drawn finer, over the same pixels
    axes[0].imshow(_outlined(rgb, segments), extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    truth = None if evidence is None else _numpy_map(evidence, shape, "evidence").astype(float)
    set_title(axes[0], counted(len(np.unique(segments)), "segment") + _evidence_title(truth))
    if truth is not None:
        axes[0].contour(truth, levels=[0.5], colors="white", linewidths=2.0)
        axes[0].contour(truth, levels=[0.5], colors="black", linewidths=0.8, linestyles="--")

    gray = rgb.mean(2)
    present = np.unique(segments)
    for axis, (name, (heat, by_id, per_pixel)) in zip(axes[1:], painted.items()):
        note = _unshown(heat, by_id, present, per_pixel)
        finite = np.abs(heat[np.isfinite(heat)])
        limit = float(finite.max()) if finite.size else 0.0
        limit = limit or 1.0
        heat = np.where(np.isinf(heat), np.sign(heat) * limit, heat)  # drawn at the range's end
        axis.imshow(gray, cmap="gray", vmin=0.0, vmax=1.0)
        shown = axis.imshow(heat, cmap=cmap, vmin=-limit, vmax=limit, alpha=alpha)
        bar = figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.03)
        bar.set_label(COLOUR_BAR_LABELS[per_pixel], fontsize=8)
        set_title(axis, name)
        if note:  # what the colours cannot tell: under the panel
            inches = min(panel_width(*shape), _cell_width(axis))
            axis.set_xlabel(wrap_to_width(note, inches, 8), fontsize=8)
        for feature, rank in _ranks_to_write(_ranked(by_id, present), top_k):
            row, col = _inside_point(segments == feature)
            axis.text(
                col,
                row,
                str(rank),
                color="black",
                fontsize=8,
                ha="center",
                va="center",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.8, "lw": 0},
            )
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    if own_figure and title:
        size = matplotlib.rcParams["figure.titlesize"]
        figure.suptitle(wrap_to_width(title, figure.get_figwidth(), size))
    return figure.figure  # the figure at the top, not the subfigure of given axes


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Save ``figure`` at ``path`` in the format its suffix names, and close it.

    Closing concerns a figure made with pyplot (``plt.subplots``), which pyplot keeps open
    until closed; one from `new_figure` (`plot_segment_scores`'s own) is freed once dropped.

    ``.png``, ``.pdf``, ``.svg``, ``.jpg`` / ``.jpeg`` and matplotlib's other formats are
    written as the suffix says; a name without a suffix is written as PNG. The folder is
    created; the figure is written to a temporary file beside ``path`` and renamed into place,
    so a failed or killed write leaves a previous file at ``path`` as it was.

    Args:
        figure: The matplotlib figure.
        path: Where to write it.
        dpi: Pixels per inch of raster formats.

    Returns:
        The path written.

    Raises:
        ValueError: Before anything is written or a folder made: if matplotlib cannot write
            the format the suffix names (the message lists the formats it can), or ``dpi`` is
            not a number from `MIN_DPI` up or makes the figure more than `MAX_PIXELS` pixels
            (the message gives the largest dpi that fits).
        OSError: If the file cannot be written (disk full, no permission, ...).
    """
    from ctc_plugin.resumable.atomic import write_atomic

    path = Path(path).expanduser()
    kind = path.suffix.lstrip(".").lower() or "png"
    _check_format(kind, path)
    _check_dpi(figure, dpi)
    try:
        write_atomic(path, lambda stream: figure.savefig(stream, dpi=dpi, format=kind))
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")  # imported by whoever made a pyplot figure
        if pyplot is not None:
            pyplot.close(figure)
    return path


def _check_format(kind: str, path: Path) -> None:
    """Refuse a suffix naming no format matplotlib writes."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if kind not in formats:
        raise ValueError(
            f"cannot write a figure as {path.name}: its suffix .{kind} names no format "
            f"matplotlib writes ({', '.join(sorted(formats))}); end the name in one of them, "
            "e.g. .png, or give it no suffix for PNG"
        )


def _check_dpi(figure: Figure, dpi: Any) -> None:
    """Refuse a ``dpi`` that is no number of `MIN_DPI` up or makes more than `MAX_PIXELS`."""
    import math
    import numbers

    if (
        isinstance(dpi, bool)
        or not isinstance(dpi, numbers.Real)
        or not math.isfinite(dpi)
        or dpi < MIN_DPI
    ):
        raise ValueError(
            f"dpi must be a number of pixels per inch from {MIN_DPI} up (100 for a screen, 300 "
            f"for print), got {dpi!r}"
        )
    width, height = figure.get_size_inches()
    if width * height * dpi**2 > MAX_PIXELS:
        fits = int(math.sqrt(MAX_PIXELS / (width * height)))
        raise ValueError(
            f"dpi={dpi} makes this {width:.3g} x {height:.3g} inch figure "
            f"{width * dpi:.0f} x {height * dpi:.0f} pixels, more than {MAX_PIXELS:,}: give a "
            f"dpi of at most {fits}"
        )


# ---------------------------------------------------------------------- helpers
def _outlined(rgb: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """``rgb`` with its segments outlined in yellow, each pixel repeated so outlines are thin.

    An outline is a drawn pixel of each segment wide: on a small image, or one of many small
    segments (a thousand SAM masks), a pixel of the image each side of every border hid most
    of the image. Each pixel is drawn as a block of ``k x k``, ``k`` making the longer side at
    least `OUTLINED_SIDE` drawn pixels, so an outline takes ``1 / k`` of a pixel.
    """
    import math

    from skimage.segmentation import mark_boundaries

    repeat = math.ceil(OUTLINED_SIDE / max(rgb.shape[:2]))
    if repeat > 1:
        rgb = rgb.repeat(repeat, axis=0).repeat(repeat, axis=1)
        segments = segments.repeat(repeat, axis=0).repeat(repeat, axis=1)
    return mark_boundaries(rgb, segments, color=(1, 1, 0), mode="inner")


def _evidence_title(truth: np.ndarray | None) -> str:
    """What the image's title adds for the evidence: its contour, or why none is drawn.

    Evidence of no pixel, or of every pixel, has no border to draw.
    """
    if truth is None:
        return ""
    inside = truth > 0.5
    if not inside.any():
        return " + evidence (no pixel)"
    return " + evidence (every pixel)" if inside.all() else " + evidence"


def _cell_width(axis: Axes) -> float:
    """Inches of the figure's width that ``axis``'s place in its grid takes (before layout)."""
    spec = axis.get_subplotspec()
    # the figure, or the subfigure it is placed in, and the figure at the top (`.figure`:
    # get_figure(root=...) is matplotlib 3.10's, and this package takes 3.7)
    holder = axis.figure
    figure_inches = holder.bbox.width / holder.figure.dpi
    if spec is None:  # placed by hand: its own width
        return axis.get_position().width * figure_inches
    columns = spec.get_gridspec().ncols
    return figure_inches * (spec.colspan.stop - spec.colspan.start) / columns


def _numpy_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Return an ``(H, W, 3)`` float array in [0, 1] from a ``(3, H, W)`` tensor or array.

    A grayscale image, ``(1, H, W)`` or ``(H, W)`` (a one-channel model's input), is drawn in
    gray. Other shapes are refused saying how to pass them.
    """
    array = _as_numpy(image)
    given = tuple(array.shape)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 3 and array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    if array.ndim != 3 or array.shape[0] != 3:
        raise ValueError(
            f"expected an image shaped (3, H, W), or (1, H, W) for grayscale, got {given}"
            + _image_shape_hint(given)
        )
    if not array.size:
        raise ValueError(f"the image is empty ({tuple(array.shape)}): there is nothing to draw")
    array = array.astype(np.float64)
    low, high = float(array.min()), float(array.max())
    if not (low >= -IMAGE_OVERSHOOT and high <= 1 + IMAGE_OVERSHOOT):  # NaN too
        raise ValueError(
            f"the image's values lie in [{low:.3g}, {high:.3g}], but it is drawn as RGB in "
            "[0, 1]: pass the pixels before normalisation (PreparedImage.pixels), or "
            "image / 255 for 8-bit values"
        )
    return np.clip(array.transpose(1, 2, 0), 0.0, 1.0)


#: How far outside [0, 1] an image's values may lie, drawn clipped: a bicubic resize of an image
#: in [0, 1] overshoots (by up to 0.16 on noise); a normalised image (about [-2, 2.6]) or an
#: 8-bit one lies farther out.
IMAGE_OVERSHOOT = 0.25


def _image_shape_hint(shape: tuple[int, ...]) -> str:
    """How to pass an image shaped ``shape`` that `_numpy_image` refuses, or ``""``."""
    if len(shape) == 4:
        return f": a batch of {shape[0]}; pass one of its images, images[i]"
    if len(shape) == 3 and shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4):
        return ": channels last; pass image.permute(2, 0, 1) (a NumPy array: .transpose(2, 0, 1))"
    if len(shape) == 3 and shape[0] == 4:
        return ": 4 channels (RGBA?); pass the colour channels, image[:3]"
    return ""


def _numpy_map(values: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    """``values`` as an ``(H, W)`` array of the image's ``shape`` (channels summed).

    ``name``: ``feature_mask``, ``evidence`` or a panel's title, for the refusal.

    Raises:
        ValueError: For another height and width, saying how to resize.
    """
    array = _as_numpy(values)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and name == "feature_mask":  # Captum's mask, kept per channel
        if not (array == array[:1]).all():
            raise ValueError(
                f"feature_mask holds {len(array)} channels that differ, {tuple(array.shape)}: "
                "pass the segments' one map (H, W), e.g. feature_mask[0] (a channel's ids "
                "summed with the others' would name other segments)"
            )
        array = array[0]
    if array.ndim == 3:  # (C, H, W) attributions: sum the channels
        array = array.sum(0)
    if array.shape != shape:
        masks = name in ("feature_mask", "evidence")
        what = name if masks else f"the map of {name!r}"
        mode = "nearest-exact" if masks else "bilinear"
        raise ValueError(
            f"{what} must be shaped {shape} (or (1, ...) of it), the image's height and width, "
            f"got {array.shape}: give the image it was made for (the one explained, after "
            f"its resizing), or resize it to the image's size "
            f"(torch.nn.functional.interpolate(..., size={shape}, mode={mode!r}))"
        )
    return array


def _inside_point(mask: np.ndarray) -> tuple[int, int]:
    """The pixel of ``mask`` farthest from its border: where a segment's rank is written.

    A segment's centroid can lie on another segment (a ring, the background around an
    object), which would credit the rank to that one. Of the pixels equally far from the
    border (the middle line of a strip), the one nearest the centroid: the first of them
    would be at the strip's end, beside the label of the segment next to it.
    """
    from scipy.ndimage import distance_transform_edt, find_objects

    (box,) = find_objects(mask.astype(np.int8))  # the segment's bounding box: a small window
    window = mask[box]
    distance = distance_transform_edt(np.pad(window, 1))[1:-1, 1:-1]
    rows, cols = np.nonzero(distance == distance.max())
    inside_rows, inside_cols = np.nonzero(window)
    nearest = np.argmin((rows - inside_rows.mean()) ** 2 + (cols - inside_cols.mean()) ** 2)
    return int(rows[nearest]) + box[0].start, int(cols[nearest]) + box[1].start


def _is_panel_mapping(scores: Any) -> bool:
    """``{title: result}`` rather than one ``{segment id: score}`` mapping."""
    return isinstance(scores, Mapping) and all(isinstance(key, str) for key in scores)


def _as_numpy(value: Any) -> np.ndarray:
    """``value`` as a NumPy array; a tensor detached, on the CPU, in a type NumPy has.

    Detached: no autograd warning for a score that requires grad. A floating-point type NumPy
    lacks (bfloat16, float8: a model run in bfloat16 gives its attributions in it) becomes
    float32.
    """
    if not isinstance(value, torch.Tensor):
        return np.asarray(value)
    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype not in _NUMPY_FLOATS:
        value = value.float()
    return value.numpy()


#: Torch's floating-point types that NumPy has too.
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def _to_list(value: Any) -> Any:
    return value.detach().cpu().tolist() if isinstance(value, torch.Tensor) else value


def _paint(
    value: Any, segments: np.ndarray, ids: Any, name: str
) -> tuple[np.ndarray, dict[int, float], bool]:
    """A panel's per-pixel values, its score of each segment id, and whether it is a map.

    The ids are those the scores name, also ids that ``segments`` does not hold; a per-pixel
    map's scores are its segments' means.
    """
    from ctc_plugin.features.partition import segment_means

    present = np.unique(segments)
    if hasattr(value, "scores") and hasattr(value, "ids"):  # FeatureScores
        _check_first_example_mask(value, segments, name)
        keep = value.present[0] if getattr(value, "present", None) is not None else None
        feature_ids = value.ids if keep is None else value.ids[keep.cpu()]
        feature_scores = (
            value.scores[0] if keep is None else value.scores[0][keep.to(value.scores.device)]
        )
        by_id = dict(zip(feature_ids.tolist(), feature_scores.tolist()))
    elif isinstance(value, Mapping):
        by_id = {int(k): float(_as_numpy(v)) for k, v in value.items()}
    elif (  # (ids, scores), as segment_means gives; a tuple of two numbers is two scores
        isinstance(value, tuple)
        and len(value) == 2
        and all(np.ndim(_to_list(part)) == 1 for part in value)
    ):
        keys, values = (np.asarray(_to_list(part), dtype=float) for part in value)
        if keys.ndim != 1 or keys.shape != values.shape:
            raise ValueError(f"{name}: (ids, scores) must be two 1-D sequences of one length")
        if not np.all(np.isfinite(keys) & (keys == np.round(keys))):
            raise ValueError(
                f"{name}: the ids of (ids, scores) must be whole numbers, got "
                f"{keys[:3].tolist()}{'...' if len(keys) > 3 else ''}; give the segment ids "
                "first, as segment_means returns them"
            )
        by_id = dict(zip(keys.astype(np.int64).tolist(), values.tolist()))
    else:
        array = _as_numpy(value)
        if array.ndim == 0:  # one number: the score of an image of one segment
            array = array.reshape(1)
        if array.ndim == 1:
            keys = present if ids is None else _as_numpy(ids)
            if len(keys) != len(array):
                raise ValueError(
                    f"{name}: {len(array)} scores for {len(keys)} segments; pass ids= to say "
                    "which segment each score belongs to"
                )
            by_id = dict(zip(np.asarray(keys).tolist(), array.astype(float).tolist()))
        else:
            heat = _numpy_map(array, segments.shape, name).astype(np.float64)
            means_ids, means = segment_means(heat, segments)
            return heat, dict(zip(means_ids.tolist(), means.tolist())), True
    # each pixel looks its segment's score up (NaN for a segment without one): one pass
    held, index = np.unique(segments, return_inverse=True)
    lookup = np.array([by_id.get(feature, np.nan) for feature in held.tolist()], dtype=float)
    return lookup[index].reshape(segments.shape), by_id, False


def _check_first_example_mask(scores: Any, segments: np.ndarray, name: str) -> None:
    """Refuse `FeatureScores` whose first example's feature mask is not ``segments``.

    A `FeatureScores` panel shows the first example of its call, by feature id: on another
    example's mask those ids name other segments. Scores without a mask of their own, of a
    tuple of inputs, or with a mask per channel are not checked.

    Raises:
        ValueError: The first example's mask differs from ``segments``, saying how to pass
            another example's scores.
    """
    masks = getattr(scores, "feature_mask", None)
    if not isinstance(masks, tuple) or len(masks) != 1:
        return
    first = masks[0]
    if first.dim() == 4 and first.shape[1] == 1:
        first = first[0, 0]
    if first.dim() != 2 or tuple(first.shape) != segments.shape:
        return
    if not np.array_equal(_as_numpy(first), segments):
        raise ValueError(
            f"{name}: FeatureScores are drawn for the first example of their call, whose "
            "feature mask differs from the feature_mask given here (another example's?); for "
            "example i pass its scores by id, dict(scores.ranked(i)), with its mask "
            "(feature_mask[i, 0])"
        )


def _ranked(by_id: dict[int, float], present: np.ndarray) -> list[tuple[int, int]]:
    """``(segment, rank)`` of the segments of ``present`` with a finite score, best first.

    Tied scores share a rank, and the next rank counts them (1, 2, 2, 4). A NaN or infinite
    score has no rank: sorting with NaN puts it anywhere.
    """
    shown = set(present.tolist())
    finite = sorted(
        (f for f, score in by_id.items() if f in shown and np.isfinite(score)),
        key=lambda f: (-by_id[f], f),
    )
    ranked: list[tuple[int, int]] = []
    for place, feature in enumerate(finite, start=1):
        tied = ranked and by_id[ranked[-1][0]] == by_id[feature]
        ranked.append((feature, ranked[-1][1] if tied else place))
    return ranked


def _unshown(
    heat: np.ndarray, by_id: dict[int, float], present: np.ndarray, per_pixel: bool
) -> str:
    """What a panel's colours cannot tell about its values, or ``""``: a note under it.

    A NaN value (of a segment, or of a pixel of a per-pixel map) and a segment without a score
    are blank, like a 0 on the grayscale image; an infinite one is drawn as the range's end,
    like the largest finite one; scores of ids that the feature mask does not hold are not
    drawn; and a panel of zeros has a range of its own (``[-1, 1]``), not the scores'.
    """
    shown = set(present.tolist())
    if per_pixel:
        values, unit, missing, unknown = heat.ravel(), "pixel", 0, 0
    else:
        scores = [by_id.get(feature) for feature in present.tolist()]
        values = np.array([score for score in scores if score is not None], dtype=float)
        unit, missing = "segment", len(scores) - len(values)
        unknown = sum(feature not in shown for feature in by_id)
    parts = [
        f"{what}: {counted(count, unit)}{how}"
        for what, count, how in (
            ("no score", missing, " (blank)"),
            ("NaN", int(np.isnan(values).sum()), " (blank)"),
            ("+inf", int(np.isposinf(values).sum()), " (drawn as the range's top)"),
            ("-inf", int(np.isneginf(values).sum()), " (drawn as the range's bottom)"),
        )
        if count
    ]
    if unknown:
        parts.append(f"{counted(unknown, 'score')} of ids not in the feature mask (not drawn)")
    finite = values[np.isfinite(values)]
    if finite.size and not finite.any():
        parts.append("all 0" if finite.size == values.size and not missing else "the rest 0")
    return "; ".join(parts)


def _ranks_to_write(ranked: list[tuple[int, int]], top_k: int) -> list[tuple[int, int]]:
    """The ranks of the ``top_k`` best segments; a tie that crosses the cut gets none.

    Which of the tied segments to write would be arbitrary: a panel of all-equal scores (all
    zero, say) gets no rank at all.
    """
    counts: dict[int, int] = {}
    for _, rank in ranked:
        counts[rank] = counts.get(rank, 0) + 1
    return [(f, rank) for f, rank in ranked if rank - 1 + counts[rank] <= top_k]
