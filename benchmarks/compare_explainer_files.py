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
from ctc_plugin.explainer.shipped import KINDS, holds_classifier, load_explainer


def main() -> None:
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
    if rebuilt.state_dict().keys() != shipped.state_dict().keys():
        raise SystemExit(f"{args.file} is another architecture than the shipped {args.kind} file")
    pairs = [
        (value, rebuilt.state_dict()[key])
        for key, value in shipped.state_dict().items()
        if value.is_floating_point()
    ]
    differing = [(a - b).abs().max().item() for a, b in pairs if not torch.equal(a, b)]
    print(
        f"weight tensors differing: {len(differing)} of {len(pairs)}"
        + (f", largest absolute difference {max(differing):.4g}" if differing else "")
    )
    images, labels, evidence = evidence_images("shapes", 200, seed=2024)
    masks = {}
    for name, explainer in (("shipped", shipped), ("rebuilt", rebuilt)):
        masks[name] = ExplainerAttribution(model, explainer).attribute(images, labels)[:, 0]
        print(f"{name:<8} IoU with the evidence {mask_iou(masks[name], evidence):.3f}")
    gap = (masks["shipped"] - masks["rebuilt"]).abs()
    print(f"masks: mean absolute difference {gap.mean():.4f}, largest {gap.max():.3f}")


if __name__ == "__main__":
    main()
