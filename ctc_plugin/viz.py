"""Figures of segment-level explanations: image, segments, ranked contributions, heatmap."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def _numpy_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Return an ``(H, W, 3)`` float array in [0, 1] from a ``(3, H, W)`` tensor or array."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 3 or array.shape[0] != 3:
        raise ValueError(f"expected an image shaped (3, H, W), got {tuple(array.shape)}")
    return np.clip(array.transpose(1, 2, 0), 0.0, 1.0)


def _numpy_map(values: torch.Tensor | np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    array = (
        values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    )
    array = np.squeeze(array)
    if array.ndim == 3:  # (C, H, W) attributions: sum the channels
        array = array.sum(0)
    if array.shape != shape:
        raise ValueError(f"{name} must be shaped {shape} (or (1, ...) of it), got {array.shape}")
    return array


def plot_explanation(
    image: torch.Tensor,
    mask: torch.Tensor,
    ranked: list[tuple[int, float]],
    attribution: torch.Tensor,
    evidence: torch.Tensor | None = None,
    title: str = "",
    top_k: int = 10,
) -> Figure:
    """Draw a four-panel explanation figure.

    Panels: the image (with the ground-truth evidence contour when given), the segments with the
    ``top_k`` strongest numbered, the ranked contributions as a bar chart, and the attribution
    heatmap over the image.

    Args:
        image: ``(3, H, W)`` image in [0, 1].
        mask: ``(H, W)`` feature ids (a ``(1, H, W)`` tensor works too).
        ranked: ``(feature id, score)`` pairs, best first (``FeatureScores.ranked()``).
        attribution: ``(H, W)`` or ``(C, H, W)`` per-pixel attribution (channels are summed).
        evidence: Optional ``(H, W)`` bool ground-truth evidence mask, drawn as a contour.
        title: Figure title.
        top_k: How many features the bar chart and the numbering show.

    Returns:
        The matplotlib figure (close it with ``matplotlib.pyplot.close`` when done).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from skimage.segmentation import mark_boundaries

    rgb = _numpy_image(image)
    shape = rgb.shape[:2]
    ids = _numpy_map(mask, shape, "mask").astype(np.int64)
    heat = _numpy_map(attribution, shape, "attribution").astype(np.float64)
    shown = ranked[:top_k]

    figure, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    axes[0].imshow(rgb)
    axes[0].set_title("image" + (" + ground-truth evidence" if evidence is not None else ""))
    if evidence is not None:
        gt = _numpy_map(evidence, shape, "evidence").astype(float)
        axes[0].contour(gt, levels=[0.5], colors="white", linewidths=2.0)
        axes[0].contour(gt, levels=[0.5], colors="black", linewidths=0.8, linestyles="--")

    axes[1].imshow(mark_boundaries(rgb, ids, color=(1, 1, 0), mode="inner"))
    axes[1].set_title(f"{len(ranked)} segments (top {len(shown)} numbered)")
    for rank, (feature, _) in enumerate(shown, start=1):
        rows, cols = np.nonzero(ids == feature)
        if len(rows):
            axes[1].text(
                cols.mean(),
                rows.mean(),
                str(rank),
                color="black",
                fontsize=9,
                ha="center",
                va="center",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.8},
            )

    values = [score for _, score in shown]
    positions = np.arange(len(shown))
    axes[2].barh(positions, values, color=["tab:red" if v >= 0 else "tab:blue" for v in values])
    axes[2].set_yticks(positions, [f"#{r} (id {f})" for r, (f, _) in enumerate(shown, 1)])
    axes[2].invert_yaxis()
    axes[2].axvline(0, color="black", linewidth=0.8)
    axes[2].set_title("contribution to the class")

    limit = float(np.abs(heat).max()) or 1.0
    axes[3].imshow(rgb.mean(2), cmap="gray", alpha=1.0)
    shown_heat = axes[3].imshow(heat, cmap="bwr", vmin=-limit, vmax=limit, alpha=0.65)
    figure.colorbar(shown_heat, ax=axes[3], fraction=0.046, pad=0.04)
    axes[3].set_title("attribution heatmap")

    for axis in (axes[0], axes[1], axes[3]):
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def save_figure(figure, path: str | Path, dpi: int = 100) -> Path:
    """Save ``figure`` as PNG at ``path`` (creating the folder) and close it.

    Returns:
        The path written.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(path, dpi=dpi, format="png")
    finally:
        plt.close(figure)
    return path
