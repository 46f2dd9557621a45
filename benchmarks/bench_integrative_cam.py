"""Speed of Integrative CAM (all stages) against pytorch-grad-cam's GradCAM++ (last layer).

ResNet-18 (torchvision, random weights, eval mode) on one 224x224 image on CPU. Every method is
timed in the same process, interleaved round by round, and the median is reported; ratios are
against GradCAM++ on ``layer4[-1]`` and against a plain forward pass (``torch.no_grad()``).

With ``--quality`` it also scores the maps of the zoo's trained ResNet on ShapesDataset images
against their ground-truth evidence masks (pointing game, share of map mass on the evidence),
next to pytorch-grad-cam's GradCAM++ on the last block.

    python benchmarks/bench_integrative_cam.py [--quick] [--threads N] [--batch N] [--quality]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from pytorch_grad_cam import GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ctc_plugin.cam.integrative import IntegrativeCAM


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 15")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    parser.add_argument("--quality", action="store_true", help="also score maps on ShapesDataset")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(args.batch, 3, 224, 224)
    target = 3
    cam_all = IntegrativeCAM(model)
    cam_all_plain = IntegrativeCAM(model, bias=False, layer_weights="uniform")
    targets = [ClassifierOutputTarget(target)] * args.batch

    def gradcampp() -> None:  # its hooks stay only for its own call, as IntegrativeCAM's do
        with GradCAMPlusPlus(model, target_layers=[model.layer4[-1]]) as cam:
            cam(x, targets=targets)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    methods: dict[str, Callable[[], object]] = {
        "forward pass (no_grad)": forward,
        "GradCAM++ layer4[-1] (pytorch-grad-cam)": gradcampp,
        "IntegrativeCAM all stages": lambda: cam_all.attribute(x, target=target),
        "IntegrativeCAM all stages, bias=False, uniform": lambda: cam_all_plain.attribute(
            x, target=target
        ),
    }
    rounds = 3 if args.quick else 15
    for fn in methods.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            times[name].append(timed(fn))
    med = {name: statistics.median(values) for name, values in times.items()}
    n_stages = len(cam_all.attribute(x, target=target, return_layer_maps=True)[1].names)

    fwd = med["forward pass (no_grad)"]
    gpp = med["GradCAM++ layer4[-1] (pytorch-grad-cam)"]
    print(
        f"ResNet-18, {args.batch}x3x224x224, CPU, {args.threads} thread(s), "
        f"median of {rounds} rounds; IntegrativeCAM covers {n_stages} stages"
    )
    print(f"{'method':<50} {'ms':>9} {'x forward':>10} {'x GradCAM++':>12}")
    for name, seconds in med.items():
        print(f"{name:<50} {seconds * 1e3:9.1f} {seconds / fwd:10.2f} {seconds / gpp:12.2f}")
    ours = med["IntegrativeCAM all stages"]
    print(
        f"\nIntegrativeCAM / GradCAM++ = {ours / gpp:.2f} (target <= 1.3); "
        f"IntegrativeCAM / forward = {ours / fwd:.2f} (target <= 3)"
    )
    if args.quality:
        quality(n_images=16 if args.quick else 96)


def quality(n_images: int) -> None:
    from ctc_plugin import zoo
    from ctc_plugin.datasets import ShapesDataset

    model = zoo.load("resnet")
    data = ShapesDataset("shapes", size=n_images, seed=2024)
    images, labels = data.tensors()
    evidence = torch.stack([data[i]["evidence"] for i in range(len(data))]).float()

    def gradcampp_last(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with GradCAMPlusPlus(model, target_layers=[model.layer4]) as cam:
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in y])
        return torch.from_numpy(maps)[:, None]

    methods: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "GradCAM++ layer4 (pytorch-grad-cam)": gradcampp_last,
        "IntegrativeCAM (defaults)": IntegrativeCAM(model).attribute,
        "IntegrativeCAM bias=False": IntegrativeCAM(model, bias=False).attribute,
        "IntegrativeCAM uniform weights": IntegrativeCAM(model, layer_weights="uniform").attribute,
        "IntegrativeCAM bias=False, uniform": IntegrativeCAM(
            model, bias=False, layer_weights="uniform"
        ).attribute,
        "IntegrativeCAM phi=identity": IntegrativeCAM(model, phi="identity").attribute,
        "IntegrativeCAM phi=identity, bias=False": IntegrativeCAM(
            model, phi="identity", bias=False
        ).attribute,
        "IntegrativeCAM phi=softplus": IntegrativeCAM(model, phi="softplus").attribute,
    }
    print(
        f"\nzoo ResNet on {n_images} ShapesDataset('shapes', seed=2024) images, true-class maps; "
        f"evidence covers {evidence.mean():.1%} of the pixels"
    )
    print(f"{'method':<40} {'pointing':>9} {'mass on evidence':>17}")
    for name, method in methods.items():
        maps = torch.cat(
            [method(images[i : i + 16], labels[i : i + 16]) for i in range(0, n_images, 16)]
        )[:, 0]
        peak = maps.flatten(1).argmax(dim=1, keepdim=True)
        pointing = evidence.flatten(1).gather(1, peak).mean()
        mass = ((maps * evidence).sum((1, 2)) / maps.sum((1, 2)).clamp_min(1e-12)).mean()
        print(f"{name:<40} {pointing:9.3f} {mass:17.3f}")


if __name__ == "__main__":
    main()
