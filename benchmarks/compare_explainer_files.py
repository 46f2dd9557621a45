"""How far a rebuilt explainer file is from the shipped one: weights, masks and IoU.

Run: ``python benchmarks/compare_explainer_files.py FILE --family vgg [--kind distilled]``.

Rebuilding a shipped explainer with its stored command at the thread count it names gives the
same weights; at another count (or another torch version) training sums in another order and
the weights move. This prints how many weight tensors differ and by how much at most, how much
the two explainers' masks of the true class differ on the 200 test images (seed 2024), and both
explainers' mean IoU with the evidence (the measure of ``bench_explainer.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from bench_explainer import evidence_images, mask_iou

from ctc_plugin import zoo
from ctc_plugin.explainer.attribution import ExplainerAttribution
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.zoo.explainers import KINDS, holds_classifier, load_explainer


def main() -> None:
    """Load both files, print how far apart their weights and masks are."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="the rebuilt explainer file")
    parser.add_argument("--family", required=True, choices=zoo.FAMILIES, help="its zoo model")
    parser.add_argument("--kind", choices=KINDS, default="distilled", help="the shipped kind")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = zoo.load(args.family)
    shipped = load_explainer(args.family, kind=args.kind)
    rebuilt = Explainer.load(
        args.file, **({"classifier": model} if holds_classifier(args.kind) else {})
    )
    if rebuilt.config() != shipped.config():
        raise SystemExit(
            f"{args.file} is another network than the shipped {args.kind} file: "
            f"{rebuilt.config()} against {shipped.config()}"
        )
    old, new = shipped.state_dict(), rebuilt.state_dict()
    floats = [key for key, value in old.items() if value.is_floating_point()]
    differing = [
        (old[k] - new[k]).abs().max().item() for k in floats if not torch.equal(old[k], new[k])
    ]
    print(
        f"weight tensors differing: {len(differing)} of {len(floats)}"
        + (f", largest absolute difference {max(differing):.4g}" if differing else "")
    )
    counters = [key for key in old if key not in floats and not torch.equal(old[key], new[key])]
    for key in counters:  # e.g. trained_steps: another training length
        if key in Explainer.ADDED_STATE:  # e.g. the classifier, not recorded in older files
            print(f"{key}: {shipped.trained_for} shipped, {rebuilt.trained_for} rebuilt")
        else:
            print(f"{key}: {old[key].tolist()} shipped, {new[key].tolist()} rebuilt")
    images, labels, evidence = evidence_images("shapes", 200, seed=2024)
    masks = {}
    for name, explainer in (("shipped", shipped), ("rebuilt", rebuilt)):
        masks[name] = ExplainerAttribution(model, explainer).attribute(images, labels)[:, 0]
        print(f"{name:<8} IoU with the evidence {mask_iou(masks[name], evidence):.3f}")
    gap = (masks["shipped"] - masks["rebuilt"]).abs()
    print(f"masks: mean absolute difference {gap.mean():.4f}, largest {gap.max():.3f}")


if __name__ == "__main__":
    main()
