"""Draw the sample-image figures of docs/datasets-and-zoo.md into docs/img/.

Run from the repository root: ``python docs/scripts/make_dataset_figures.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ctc_plugin.datasets import ShapesDataset  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "img"


def draw(split: str, columns: int = 6, seed: int = 3) -> Path:
    """Draw ``columns`` images of ``split`` with their evidence contour and instance ids."""
    data = ShapesDataset(split, size=columns, seed=seed)
    figure, axes = plt.subplots(2, columns, figsize=(2.2 * columns, 4.6))
    for i in range(columns):
        item = data[i]
        axes[0, i].imshow(item["image"].permute(1, 2, 0).numpy())
        axes[0, i].contour(item["evidence"].float().numpy(), levels=[0.5], colors="white")
        axes[0, i].set_title(data.classes[item["label"]])
        axes[1, i].imshow(
            item["instances"].numpy(), cmap="tab10", vmin=0, vmax=9, interpolation="nearest"
        )
        axes[1, i].set_title("instances")
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f'ShapesDataset("{split}", seed={seed}): evidence outlined in white')
    figure.tight_layout()
    path = OUT / f"{split}-samples.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for split in ("shapes", "composite"):
        print(draw(split))
