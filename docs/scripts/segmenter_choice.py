"""Localisation of CTC and FeatureAblation with each offline segmenter, on the zoo's models.

The benchmark's held-out images (``ShapesDataset("shapes", seed=2026)``, explained for their
true label), each method called as the benchmark calls it (`ctc_plugin.harness.methods`),
with the features of each segmenter: a 4 x 4 and an 8 x 8 grid (`GridSegmenter`), SLIC
superpixels with 25 (the default) and 50 segments (`SuperpixelSegmenter`), Felzenszwalb
superpixels, and the scene's true objects (``oracle``: what an object-level segmenter such as
SAM gives at best). Prints, per model and feature source, the mean number of features and per
method the pointing game, relevance mass, IoU of the map thresholded at half its maximum, and
seconds per image (one thread; compare within a run).

Used on the "Choose a method" page. Run:
``python docs/scripts/segmenter_choice.py [--families resnet efficientnet] [--images 50]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from ctc_plugin import zoo
from ctc_plugin.datasets import ShapesDataset
from ctc_plugin.evaluation.localisation import (
    binarize,
    iou,
    pointing_game,
    relevance_mass_accuracy,
)
from ctc_plugin.features import GridSegmenter, SuperpixelSegmenter
from ctc_plugin.harness.methods import registry

METHODS = ("CTC-reference", "CTC-proportional", "CTC-none", "FeatureAblation")


def sources(images: torch.Tensor, instances: torch.Tensor) -> dict[str, torch.Tensor]:
    """Feature masks (N, 1, H, W) of every segmenter for the images."""
    return {
        "grid 4x4": GridSegmenter(4)(images),
        "grid 8x8": GridSegmenter(8)(images),
        "SLIC, 25": SuperpixelSegmenter()(images),
        "SLIC, 50": SuperpixelSegmenter(n_segments=50)(images),
        "Felzenszwalb": SuperpixelSegmenter("felzenszwalb")(images),
        "oracle (true objects)": instances,
    }


def main() -> None:
    """Print one table per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["resnet", "efficientnet"])
    parser.add_argument("--images", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = ShapesDataset("shapes", size=args.images, seed=2026)
    items = [data[i] for i in range(args.images)]
    images = torch.stack([item["image"] for item in items])
    labels = torch.tensor([item["label"] for item in items])
    evidence = torch.stack([item["evidence"] for item in items])
    instances = torch.stack([item["instances"] for item in items])[:, None].long()
    masks = sources(images, instances)
    methods = registry()
    for family in args.families:
        model = zoo.load(family)
        print(f"\n{family}, {args.images} shapes images (seed 2026), true label\n")
        print("| features | count | method | pointing ↑ | mass ↑ | iou ↑ | s/image ↓ |")
        print("|---|---|---|---|---|---|---|")
        for source, mask in masks.items():
            count = sum(len(m.unique()) for m in mask) / len(mask)
            for name in METHODS:
                fn = methods[name].fn
                fn(model, images[:1], labels[:1], mask[:1])  # warm-up
                start = time.perf_counter()
                maps = torch.cat(
                    [
                        fn(model, images[i : i + 1], labels[i : i + 1], mask[i : i + 1])
                        for i in range(args.images)
                    ]
                ).detach()
                seconds = (time.perf_counter() - start) / args.images
                # NaN (a map without positive relevance) is left out, as in the benchmark
                point = pointing_game(maps, evidence).nanmean().item()
                mass = relevance_mass_accuracy(maps, evidence).nanmean().item()
                overlap = iou(binarize(maps, 0.5), evidence).nanmean().item()
                print(
                    f"| {source} | {count:.1f} | {name} | {point:.3f} | {mass:.3f} | "
                    f"{overlap:.3f} | {seconds:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
