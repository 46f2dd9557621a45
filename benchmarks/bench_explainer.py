"""Shipped explainers: per-image speed against CTC, localisation against Grad-CAM.

Run: ``python benchmarks/bench_explainer.py [--quick] [--families vgg resnet ...]
[--kind default|class-specific|distilled] [--speed-only]``.

Speed:
For each zoo model with a shipped explainer, every method explains the same images (the target
being the true class), one image per call and then all images in one call, on one CPU thread;
the table gives the median milliseconds per image and how many times faster the explainer is.
CTC (default "reference" sharing) and Captum's FeatureAblation use the same 4x4 grid feature
mask (16 features). The peer "no classifier check" is the explainer itself with
``check_classifier=False``: its ratio below 1 is what the check of the classifier's weights
costs per call.

Quality: mean IoU of the thresholded maps (>= 0.5 x the map's maximum, the same rule for both)
with the evidence masks on fresh images (seed 2024), against pytorch-grad-cam's GradCAM on the
model's last convolution; and the class-specific table on two-object images (seed 2025).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from captum.attr import FeatureAblation

from ctc_plugin import CTC, zoo
from ctc_plugin.datasets import ShapesDataset
from ctc_plugin.evaluation.localisation import binarize, iou
from ctc_plugin.explainer.attribution import ExplainerAttribution
from ctc_plugin.explainer.specificity import specificity_table, two_object_images
from ctc_plugin.zoo.explainers import KINDS, load_explainer, shipped_explainers


def grid_mask(size: int, cells: int = 4) -> torch.Tensor:
    """A ``(1, 1, size, size)`` feature mask of ``cells x cells`` square features."""
    rows = torch.arange(size) * cells // size
    return (rows[:, None] * cells + rows[None, :])[None, None]


def per_image_ms(
    explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    batch: int,
    repeats: int = 1,
) -> float:
    """Median wall-clock milliseconds per image, explaining ``batch`` images per call."""
    for _ in range(3):  # warm-up: the first calls after another model's run are slower
        explain(images[:batch], labels[:batch])
    times = []
    for _ in range(repeats):
        for begin in range(0, len(images), batch):
            x, t = images[begin : begin + batch], labels[begin : begin + batch]
            start = time.perf_counter()
            explain(x, t)
            times.append(1000 * (time.perf_counter() - start) / len(x))
    return statistics.median(times)


def evidence_images(split: str, count: int, seed: int) -> tuple[torch.Tensor, ...]:
    """``(images, labels, evidence)`` of ``count`` fresh images of ``split`` (seed ``seed``)."""
    data = ShapesDataset(split, size=count, seed=seed)
    items = [data[i] for i in range(count)]
    images = torch.stack([item["image"] for item in items])
    labels = torch.tensor([item["label"] for item in items])
    evidence = torch.stack([item["evidence"] for item in items])
    return images, labels, evidence


def mask_iou(masks: torch.Tensor, evidence: torch.Tensor) -> float:
    """Mean IoU with the evidence of maps thresholded at half their maximum (NaN images out)."""
    return iou(binarize(masks, 0.5), evidence).nanmean().item()


def grad_cam_iou(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, evidence: torch.Tensor
) -> float:
    """:func:`mask_iou` of pytorch-grad-cam's GradCAM on the model's last feature map (a
    transformer's last block, its tokens reshaped to the patch grid; ``grad_cam_layer``)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from ctc_plugin.cam.transformers import grad_cam_layer

    layer, reshape = grad_cam_layer(model, images)
    with GradCAM(model, [layer], reshape_transform=reshape) as cam:
        maps = cam(images, targets=[ClassifierOutputTarget(int(c)) for c in labels])
    return mask_iou(torch.from_numpy(maps), evidence)


def localisation(
    families: list[str], count: int, split: str = "shapes", kind: str = "default"
) -> None:
    """Print the mean IoU with the evidence of the explainer (of ``kind``) and of Grad-CAM."""
    images, labels, evidence = evidence_images(split, count, seed=2024)
    print(
        f"\nmean IoU with the evidence masks, {split} split, {count} images (seed 2024), "
        f"{kind} explainers"
    )
    header = f"{'model':<10} {'explainer':>10} {'Grad-CAM':>10} {'difference':>11}"
    print(header + "\n" + "-" * len(header))
    for family in families:
        model = zoo.load(family, split)
        explainer = load_explainer(family, split, kind)
        masks = ExplainerAttribution(model, explainer).attribute(images, labels)
        ours = mask_iou(masks[:, 0], evidence)
        theirs = grad_cam_iou(model, images, labels, evidence)
        print(f"{family:<10} {ours:>10.3f} {theirs:>10.3f} {ours - theirs:>+11.3f}")


def specificity(families: list[str], count: int, kind: str = "default") -> None:
    """Print the class-specific table of each model's ``kind`` explainer on two-object images."""
    data = ShapesDataset("shapes", size=8 * count, seed=2025)
    images, pairs = two_object_images(data, count)
    for family in families:
        table = specificity_table(
            zoo.load(family, "shapes"), load_explainer(family, "shapes", kind), images, pairs,
            data.classes,
        )  # fmt: skip
        print(
            f"\n{family} ({kind} explainer): class probability in % on {count} two-object "
            "images (seed 2025)"
        )
        print(table.markdown())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 images instead of 32")
    parser.add_argument("--families", nargs="*", help="zoo families (default: all shipped)")
    parser.add_argument(
        "--kind", choices=KINDS, default="default", help="which shipped explainers (default: fast)"
    )
    parser.add_argument(
        "--speed-only", action="store_true", help="the speed table only (no IoU, no specificity)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    count = 8 if args.quick else 32
    data = ShapesDataset("shapes", size=count, seed=4242)
    images, labels = data.tensors()
    mask = grid_mask(data.image_size)
    kind = args.kind
    families = args.families or [f for f, s in shipped_explainers(kind) if s == "shapes"]
    print(f"{count} images of {data.image_size}x{data.image_size}, 1 thread, {kind} explainers")
    print("ms per image; batch = images per attribute call")
    header = (
        f"{'model':<10} {'batch':>5} {'explainer ms':>13} {'peer':<19} {'peer ms':>9} {'ratio':>8}"
    )
    print(header)
    print("-" * len(header))
    speed(families, images, labels, mask, kind)
    if args.speed_only:
        return
    localisation(families, 50 if args.quick else 200, kind=kind)
    composite = [f for f, s in shipped_explainers(kind) if s == "composite" and f in families]
    if composite:
        localisation(composite, 50 if args.quick else 200, split="composite", kind=kind)
    specificity(families, 40 if args.quick else 100, kind)


def speed(families, images, labels, mask, kind: str = "default") -> None:
    """Print the per-image timing table, one image per call and the whole batch per call."""
    for family in families:
        model = zoo.load(family, "shapes")
        attribution = ExplainerAttribution(model, load_explainer(family, "shapes", kind))
        peers: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
            "CTC (16 feat.)": partial(
                CTC(model, bias_sharing="reference").attribute, feature_mask=mask
            ),
            "FeatureAbl. (16)": partial(  # all 16 features in one pass, as CTC takes them
                FeatureAblation(model).attribute, feature_mask=mask, perturbations_per_eval=16
            ),
            "no classifier check": ExplainerAttribution(
                model, attribution.explainer, check_classifier=False
            ).attribute,
        }
        for batch, repeats in ((1, 1), (len(images), 3)):
            fast = per_image_ms(  # a few ms a call: five passes steady the median
                lambda x, t, a=attribution: a.attribute(x, target=t), images, labels, batch, 5
            )
            for name, explain in peers.items():
                slow = per_image_ms(
                    lambda x, t, f=explain: f(x, target=t),
                    images,
                    labels,
                    batch,
                    5 if name == "no classifier check" else repeats,
                )
                print(
                    f"{family:<10} {batch:>5} {fast:>13.2f} {name:<19} {slow:>9.2f} "
                    f"{slow / fast:>7.1f}x"
                )


if __name__ == "__main__":
    main()
