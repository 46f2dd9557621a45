"""Draw ``docs/img/ctc-time-vs-k.png``: CTC's time against K and image size, with FeatureAblation.

Torchvision ResNet-18 (random weights, eval mode), one image, grid features, the same
feature_mask and perturbations_per_eval (K) for every method, one thread on the CPU. Left: time
against K (16, 64, 256) at 224x224; right: time against the image size (112, 224, 448) at
K = 64. CTC ``"none"`` (gradient shortcut), ``"proportional"`` and ``"reference"``, dense and
with sparse copies, against Captum's FeatureAblation; each point is the median of ``REPEATS``
interleaved calls (after a warm-up). The grid is kept this small (three values of K, three
sizes, ResNet-18 rather than ResNet-50) so that the script runs in under 15 minutes on a
shared 2-core machine.

Run: ``nice python docs/scripts/make_ctc_time_figure.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from captum.attr import FeatureAblation  # noqa: E402

from ctc_plugin import CTC  # noqa: E402
from ctc_plugin.ctc.speedups import DEFAULT  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "img" / "ctc-time-vs-k.png"
FEATURES = (16, 64, 256)
SIZES = (112, 224, 448)
REPEATS = 3


def grid_mask(size: int, features: int) -> torch.Tensor:
    """A square grid of ``features`` cells."""
    side = int(round(features**0.5))
    rows = torch.arange(size) * side // size
    return (rows.view(-1, 1) * side + rows.view(1, -1)).view(1, 1, size, size)


def methods(model: torch.nn.Module) -> dict:
    """Each method by label, as ``call(x, mask, target, k)``."""
    ablation = FeatureAblation(model)

    def feature_ablation(x, mask, target, k):
        with torch.no_grad():
            ablation.attribute(x, target=target, feature_mask=mask, perturbations_per_eval=k)

    runs = {"FeatureAblation": feature_ablation}
    for mode, sparse in (
        ("none", False),
        ("proportional", False),
        ("proportional", True),
        ("reference", False),
        ("reference", True),
    ):
        ctc = CTC(model, bias_sharing=mode)
        ctc._speedups = dataclasses.replace(DEFAULT, sparse_copies=sparse)
        label = f'CTC "{mode}"' + (", sparse" if sparse else "")
        runs[label] = lambda x, mask, target, k, ctc=ctc: ctc.attribute(
            x, target=target, feature_mask=mask, perturbations_per_eval=k
        )
    return runs


def measure(runs: dict, model, size: int, features: int) -> dict[str, float]:
    """Median seconds of each method at one point, the methods interleaved."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    mask = grid_mask(size, features)
    target = int(model(x).argmax())
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(REPEATS):
        for label, run in runs.items():
            start = time.perf_counter()
            run(x, mask, target, features)
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}


def main() -> None:
    """Measure every point, draw the figure and print the times."""
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    runs = methods(model)
    measure(runs, model, 112, 16)  # warm-up
    by_k = {k: measure(runs, model, 224, k) for k in FEATURES}
    by_size = {s: measure(runs, model, s, 64) for s in SIZES}
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label in runs:
        style = {"color": "black", "linewidth": 2} if label == "FeatureAblation" else {}
        dashes = (4, 2) if label.endswith("sparse") else ()
        axes[0].plot(FEATURES, [by_k[k][label] for k in FEATURES], "o-", label=label,
                     dashes=dashes, **style)  # fmt: skip
        axes[1].plot(SIZES, [by_size[s][label] for s in SIZES], "o-", label=label,
                     dashes=dashes, **style)  # fmt: skip
    for axis, xlabel, ticks in ((axes[0], "K (grid features), 224x224", FEATURES),
                                (axes[1], "image size, K = 64", SIZES)):  # fmt: skip
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.set_xlabel(xlabel)
        axis.set_ylabel("seconds per image (1 thread)")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")  # the lines are low there
    figure.suptitle("ResNet-18 on a CPU: CTC against FeatureAblation")
    figure.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUT, dpi=110)
    for name, table in (("K", by_k), ("size", by_size)):
        for point, row in table.items():
            cells = ", ".join(f"{label} {seconds:.2f}" for label, seconds in row.items())
            print(f"{name} = {point}: {cells}")


if __name__ == "__main__":
    main()
