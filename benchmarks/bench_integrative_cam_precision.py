"""How far Integrative CAM's maps of a float16 or bfloat16 model lie from float32's.

    python benchmarks/bench_integrative_cam_precision.py [--images 16] [--threads 1]

Each model is cast to float16 and to bfloat16, and its maps (fused, and each stage's) are
compared with those of the same rounded weights in float32 (``model.to(dtype).float()``) on the
same rounded images: what is left is the error of running the model in the low precision, not
of its weights. Printed per model, dtype and ``bias`` (maps are in [0, 1]): the largest
difference of a fused map, that of the median image's fused map, and the largest of a stage
map; then the same three with the method's own arithmetic (channel weights, alpha, bias map,
calibration, fusion) in float64 instead of float32, which shows how much of the difference that
arithmetic makes. The float32 rows compare float32 with float64 models: float32's own noise.

Models: the zoo's trained ResNet (ReLU, max-pooling) on ShapesDataset images, and torchvision's
EfficientNet-B0 (SiLU, no max-pooling) with random weights, statistics and biases on random
64 x 64 images.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
from collections.abc import Iterator
from unittest import mock

import torch
import torchvision

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam import integrative
from ctc_plugin.testing import randomise_statistics_and_biases


@contextlib.contextmanager
def float64_arithmetic() -> Iterator[None]:
    """Run the method's per-stage arithmetic in float64 (it is float32 at least)."""
    promote = torch.promote_types

    def wider(a: torch.dtype, b: torch.dtype) -> torch.dtype:
        return torch.float64 if b is torch.float32 else promote(a, b)

    with mock.patch.object(integrative.torch, "promote_types", wider):
        yield


def largest_differences(
    model: torch.nn.Module, images: torch.Tensor, dtype: torch.dtype, bias: bool, wide: bool
) -> tuple[float, float, float]:
    """The (largest fused, median image's fused, largest stage) map differences of ``dtype``."""
    low = copy.deepcopy(model).to(dtype)
    reference_dtype = torch.float64 if dtype is torch.float32 else torch.float32
    reference = copy.deepcopy(model).to(dtype).to(reference_dtype)
    x = images.to(dtype)
    with float64_arithmetic() if wide else contextlib.nullcontext():
        fused, stages = IntegrativeCAM(low, bias=bias).attribute(x, 1, return_layer_maps=True)
    ref_fused, ref_stages = IntegrativeCAM(reference, bias=bias).attribute(
        x.to(reference_dtype), 1, return_layer_maps=True
    )
    per_image = (fused.double() - ref_fused.double()).abs().flatten(1).amax(1)
    stage_difference = (stages.maps.double() - ref_stages.maps.double()).abs().max().item()
    return per_image.max().item(), per_image.median().item(), stage_difference


def models(n_images: int) -> Iterator[tuple[str, torch.nn.Module, torch.Tensor]]:
    from ctc_plugin import zoo
    from ctc_plugin.datasets import ShapesDataset

    images, _ = ShapesDataset("shapes", size=n_images, seed=2024).tensors()
    yield "zoo ResNet (trained)", zoo.load("resnet").eval(), images
    torch.manual_seed(0)
    efficientnet = torchvision.models.efficientnet_b0(num_classes=5)
    randomise_statistics_and_biases(efficientnet, seed=1, noise=0.02)
    generator = torch.Generator().manual_seed(0)
    yield (
        "EfficientNet-B0 (random)",
        efficientnet.eval(),
        torch.rand(n_images, 3, 64, 64, generator=generator),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=None, help="images per model (default 16; --quick: 2)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--quick", action="store_true", help="2 images per model (a smoke run, as run_all passes)"
    )
    args = parser.parse_args()
    count = args.images if args.images is not None else 2 if args.quick else 16
    torch.set_num_threads(args.threads)
    print(
        f"{'model':<26} {'dtype':<9} {'bias':<6} {'fused':>7} {'median':>7} {'stage':>7}"
        "   the same, float64 arithmetic"
    )
    for name, model, images in models(count):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for bias in (True, False):
                row = largest_differences(model, images, dtype, bias, wide=False)
                if dtype is not torch.float32:
                    row += largest_differences(model, images, dtype, bias, wide=True)
                label = str(dtype).removeprefix("torch.")
                numbers = " ".join(f"{value:>7.3f}" for value in row)
                print(f"{name:<26} {label:<9} {bias!s:<6} {numbers}")


if __name__ == "__main__":
    main()
