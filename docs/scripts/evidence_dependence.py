"""Measure whether the zoo models decide by the ground-truth evidence, not by a shortcut.

Each image of a fresh sample is shown to a zoo model as drawn and changed in one way:

* ``no evidence``: the evidence objects painted over with the scene's own background (the
  pixels the image would have without them);
* ``no distractors, new background``: the distractors left out and the background drawn from
  another seed (everything but the evidence changed);
* ``composite`` only: ``no container`` and ``no content``, one of the two evidence objects
  painted over.

A model that decides by the evidence loses its accuracy without it and keeps it when the rest
changes. For each family and split the script prints the accuracy on each variant, its mean
over the classes (the balanced accuracy, chance for answers that ignore the label) and the
mean margin of the true class (its logit minus the largest other logit) per class, which shows
the class a model answers when it sees no evidence.

Run: ``python docs/scripts/evidence_dependence.py [--split shapes composite] [--images 200]
[--seed 1] [--families vgg resnet]``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch

from ctc_plugin import zoo
from ctc_plugin.datasets import ShapesDataset
from ctc_plugin.datasets.scene import render, render_background

#: What each variant changes, in the order printed.
VARIANTS = ("as drawn", "no evidence", "no distractors, new background")
#: The composite split's two evidence objects (instance ids 1 and 2), painted over one at a time.
PARTS = {"no container": 1, "no content": 2}


def variants(split: str, images: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The images of ``ShapesDataset(split, size=images, seed=seed)`` as drawn and changed.

    Returns:
        ``({variant: (N, 3, H, W) images}, (N,) labels)``; the variants are `VARIANTS`, and for
        ``"composite"`` also those of `PARTS`.
    """
    data = ShapesDataset(split, size=images, seed=seed)
    names = VARIANTS + (tuple(PARTS) if split == "composite" else ())
    out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    labels = []
    for index in range(images):
        scene, label = data.scene(index)
        labels.append(label)
        image, evidence, instances = render(scene)
        background = render_background(scene).transpose(2, 0, 1)
        out["as drawn"].append(image)
        out["no evidence"].append(np.where(evidence, background, image))
        kept = tuple(obj for obj in scene.objects if obj.evidence)
        other = (scene.background_seed + 1) % 2**31
        out["no distractors, new background"].append(
            render(replace(scene, objects=kept, background_seed=other))[0]
        )
        for name, part in PARTS.items():
            if name in out:
                out[name].append(np.where(instances == part, background, image))
    stacked = {name: torch.from_numpy(np.stack(arrays)) for name, arrays in out.items()}
    return stacked, torch.tensor(labels)


@torch.no_grad()
def measure(
    family: str, split: str, images: dict[str, torch.Tensor], labels: torch.Tensor
) -> dict[str, dict[str, object]]:
    """Accuracy and the true class's mean margin per class of the zoo model on each variant.

    Returns:
        ``{variant: {"accuracy": float, "balanced": float, "margin": [...]}}``: the share of
        right answers, their mean over the classes (``1 / classes`` for answers that do not
        depend on the label, whatever the classes' frequencies) and the mean margin of each
        class's images (NaN for a class without images).
    """
    model = zoo.load(family, split)
    classes = len(ShapesDataset(split, size=0).classes)
    rows = torch.arange(len(labels))
    out = {}
    for name, batch in images.items():
        logits = model(batch).double()
        true = logits[rows, labels]
        others = logits.clone()
        others[rows, labels] = float("-inf")
        margin = true - others.max(dim=1).values
        right = (logits.argmax(1) == labels).double()
        out[name] = {
            "accuracy": float(right.mean()),
            "balanced": float(np.nanmean([right[labels == c].mean() for c in range(classes)])),
            "margin": [float(margin[labels == c].mean()) for c in range(classes)],
        }
    return out


def main() -> None:
    """Print, per split and family, the accuracy and per-class margin on each variant."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", nargs="+", default=["shapes", "composite"])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--families", nargs="+", default=list(zoo.FAMILIES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    for split in args.split:
        images, labels = variants(split, args.images, args.seed)
        names = ShapesDataset(split, size=0).classes
        print(
            f"{split}, {args.images} images, seed {args.seed}: accuracy, balanced accuracy, "
            f"margin per class {names}"
        )
        for family in args.families:
            for variant, result in measure(family, split, images, labels).items():
                margins = " ".join(f"{m:6.2f}" for m in result["margin"])
                print(
                    f"  {family:13s} {variant:31s} {result['accuracy']:6.1%} "
                    f"{result['balanced']:6.1%}   {margins}"
                )


if __name__ == "__main__":
    main()
