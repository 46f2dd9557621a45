"""How the distilled explainers' gate threshold and mask offset were chosen, on validation images.

Run: ``python benchmarks/bench_gate_calibration.py [--families vgg resnet densenet inception]``
(it shares the IoU helpers of ``bench_explainer.py`` beside it).

For each family the distilled explainer (the shipped file, or one built with the shipped
file's command for a family without one) is evaluated with its gate threshold ``t`` and mask
offset ``b`` (added to the mask logits; the shipped files hold ``b = 0.5``) set to each
setting of a small grid: the mean IoU with the evidence on 200 images (seed 5000) against
Grad-CAM's, and on 100 two-object images (composed from seed 5001) the smallest ratio over the
classes of the probability under the class's own mask to the unmasked one, and the other
object's mask's mean probability over the own mask's. None of these seeds is a training seed
or one of the tests' (2024, 2025). The tests ask for IoU >= Grad-CAM + 0.1, the ratio >= 0.8 for
every class and the other/own ratio < 0.5.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from bench_explainer import evidence_images, grad_cam_iou, mask_iou
from quick_defaults import parse_with_quick

from ctc_plugin import zoo
from ctc_plugin.cli import main as cli
from ctc_plugin.datasets import ShapesDataset
from ctc_plugin.explainer.attribution import ExplainerAttribution
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.explainer.specificity import specificity_table, two_object_images
from ctc_plugin.zoo.explainers import explainer_path

GRID = ((0.3, 0.0), (0.2, 0.5), (0.3, 0.5), (0.2, 1.0))  # (threshold, absolute mask offset)
SHIPPED_OFFSET = 0.5


def distilled_file(family: str, folder: Path) -> Path:
    """The shipped distilled explainer of ``family``, or one built with the same command."""
    path = explainer_path(family, "shapes", "distilled")
    if path.is_file():
        return path
    out = folder / f"{family}.pt"
    gate = ["explainer", "gate", "--model", family, "--gate", "student-unet"]
    cli([*gate, "--mask-offset", str(SHIPPED_OFFSET), "--no-progress", "--out", str(out)])
    return out


def evaluate(family: str, path: Path, count: int = 200, pair_count: int = 100) -> None:
    """Print one row per grid setting (IoU on ``count`` images, the table on ``pair_count``)."""
    model = zoo.load(family)
    images, labels, evidence = evidence_images("shapes", count, seed=5000)
    grad_cam = grad_cam_iou(model, images, labels, evidence)
    pairs_data = ShapesDataset("shapes", size=8 * pair_count, seed=5001)
    pair_images, pairs = two_object_images(pairs_data, pair_count)
    for threshold, offset in GRID:
        explainer = Explainer.load(path)
        with torch.no_grad():
            explainer.backbone.threshold.fill_(threshold)
            mask_head = getattr(explainer.backbone, "mask", explainer.backbone).head
            mask_head.bias += offset - SHIPPED_OFFSET
            masks = ExplainerAttribution(model, explainer).attribute(images, labels)
            table = specificity_table(model, explainer, pair_images, pairs, pairs_data.classes)
        ours = mask_iou(masks[:, 0], evidence)
        seen = table.counts > 0
        own_ratio = (table.own_mask[seen] / table.unmasked[seen]).min().item()
        other_ratio = (table.other_mask[seen].mean() / table.own_mask[seen].mean()).item()
        print(
            f"{family:<10} {threshold:>4} {offset:>6} {ours:>6.3f} {grad_cam:>9.3f} "
            f"{own_ratio:>14.2f} {other_ratio:>10.3f}",
            flush=True,
        )


def run() -> None:
    """Parse the arguments and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=list(zoo.FAMILIES))
    parser.add_argument("--quick", action="store_true", help="50 and 40 images, resnet only")
    args = parse_with_quick(parser, families=["resnet"])
    counts = (50, 40) if args.quick else (200, 100)
    torch.set_num_threads(1)
    columns = ("t", 4), ("offset", 6), ("IoU", 6), ("Grad-CAM", 9), ("min own/unmasked", 14)
    print(f"{'model':<10} " + " ".join(f"{name:>{width}}" for name, width in columns), "other/own")
    with tempfile.TemporaryDirectory() as folder:
        for family in args.families:
            evaluate(family, distilled_file(family, Path(folder)), *counts)


if __name__ == "__main__":
    run()
