"""Which torchvision classification families CTC and Integrative CAM explain, one model each.

For the smallest model of every family in ``torchvision.models`` (random weights; every
BatchNorm's running statistics, every bias and every normalisation weight set to random values,
so that the biases CTC shares are not zero, and every weight torchvision starts at zero, ViT's
head and class token, drawn from N(0, 0.02²), so that the logit depends on the image), in
float64 on a 2 x 2 grid of features:

- ``CTC "proportional"``: the largest relative difference between the sum of the feature scores
  and the target logit over two images (exact propagation gives float64 rounding, ~1e-15), or
  the first line of the error when CTC refuses the model, or ``degenerate`` when the four
  scores of an image are all equal (a logit that does not depend on the image makes the sum
  trivially right);
- ``CTC "reference"``: whether the published formula runs and gives finite scores;
- ``IntegrativeCAM``: how many stages it found and fused, or the first line of its error.

Used on the "Choose a method" page. Run:
``python docs/scripts/torchvision_support.py [--builders resnet18 vit_b_16]`` (about four
minutes on one CPU thread, half of it MaxViT at 224 x 224).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable

import torch
import torchvision
from torch import nn

from ctc_plugin import CTC, IntegrativeCAM
from ctc_plugin.testing import randomise_statistics_and_biases

#: The smallest builder of each torchvision family, and the input side it is run at.
FAMILIES: dict[str, tuple[str, int]] = {
    "AlexNet": ("alexnet", 64),
    "VGG": ("vgg11_bn", 32),
    "ResNet": ("resnet18", 32),
    "ResNeXt / Wide ResNet": ("resnext50_32x4d", 32),
    "SqueezeNet": ("squeezenet1_1", 64),
    "DenseNet": ("densenet121", 32),
    "GoogLeNet": ("googlenet", 64),
    "Inception v3": ("inception_v3", 80),
    "MobileNet v2": ("mobilenet_v2", 32),
    "MobileNet v3": ("mobilenet_v3_small", 32),
    "MNASNet": ("mnasnet0_5", 32),
    "ShuffleNet v2": ("shufflenet_v2_x0_5", 32),
    "EfficientNet": ("efficientnet_b0", 32),
    "EfficientNet v2": ("efficientnet_v2_s", 32),
    "RegNet X": ("regnet_x_400mf", 32),
    "RegNet Y": ("regnet_y_400mf", 32),
    "ConvNeXt": ("convnext_tiny", 32),
    "ViT": ("vit_b_16", 32),
    "Swin": ("swin_t", 64),
    "Swin v2": ("swin_v2_t", 64),
    "MaxViT": ("maxvit_t", 224),
}


def build(name: str, size: int) -> nn.Module:
    """The torchvision model with random weights, statistics and biases, eval mode, float64."""
    torch.manual_seed(0)
    options = {"image_size": size} if name.startswith("vit_") else {}
    if name in {"googlenet", "inception_v3"}:
        options = {"aux_logits": False, "init_weights": True}
    model = getattr(torchvision.models, name)(weights=None, **options)
    randomise_statistics_and_biases(model, seed=1)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2 and not parameter.any():  # ViT's head and class token
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model.eval().double()


def grid(size: int) -> torch.Tensor:
    """A 2 x 2 grid feature mask (1, 1, size, size)."""
    rows = torch.arange(size) * 2 // size
    return (rows.view(1, 1, -1, 1) * 2 + rows.view(1, 1, 1, -1)).long()


def first_line(error: Exception) -> str:
    """The error's type and the first sentence of its message, for a table cell."""
    text = str(error).splitlines()[0]
    return f"{type(error).__name__}: {text[:150]}"


def ctc_cells(model: nn.Module, x: torch.Tensor, target: int) -> tuple[str, str]:
    """The table's CTC cells: ``"proportional"``'s sum vs logit, and whether ``"reference"`` runs.

    On a 2 x 2 grid of ``x``'s (square) size; a refusal gives the first line of its error.
    """
    size = x.shape[-1]
    try:
        _, scores = CTC(model, bias_sharing="proportional").attribute(
            x, target, feature_mask=grid(size), return_feature_scores=True
        )
        with torch.no_grad():
            logits = model(x)[:, target]
        error = ((scores.scores.sum(1) - logits).abs() / logits.abs()).max().item()
        spread = (scores.scores.amax(1) - scores.scores.amin(1)) / logits.abs()
        degenerate = bool((spread < 1e-12).any())
        proportional = "degenerate: equal scores" if degenerate else f"{error:.0e}"
    except Exception as failure:  # noqa: BLE001 - reported in the table
        proportional = "refused: " + first_line(failure)
    try:
        out = CTC(model, bias_sharing="reference").attribute(x, target, feature_mask=grid(size))
        reference = "runs" if torch.isfinite(out).all() else "non-finite scores"
    except Exception as failure:  # noqa: BLE001
        reference = "refused: " + first_line(failure)
    return proportional, reference


def cam_cell(model: nn.Module, x: torch.Tensor, target: int) -> str:
    """The table's Integrative CAM cell: how many stages it fuses, or why it refuses.

    Blocks known not to make maps of the image (Perceiver's latents) give the reason.
    """
    try:
        _, maps = IntegrativeCAM(model).attribute(x, target, return_layer_maps=True)
        return f"{len(maps.names)} stages"
    except Exception as failure:  # noqa: BLE001
        known = str(failure).partition(" does not explain: ")[2]
        if known:  # blocks known not to make maps of the image: the reason, to its first colon
            return "refused: " + known.partition(":")[0]
        return "refused: " + first_line(failure)


def print_table(
    versions: str,
    entries: Iterable[tuple[str, str, int]],
    build: Callable[[str, int], nn.Module],
    seed: int,
    target: int,
) -> None:
    """Print the Markdown table of ``entries`` ``(family, model name, input side)``.

    Each model is ``build(name, side)``, run on two random images (drawn with ``seed``) for
    class ``target``; the time of each row is printed below it (not part of the table).
    """
    print(versions)
    print(
        '| family | model | input | CTC "proportional": sum vs logit | CTC "reference" '
        "| IntegrativeCAM |"
    )
    print("|---|---|---|---|---|---|")
    for family, name, size in entries:
        start = time.perf_counter()
        model = build(name, size)
        x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed)).double()
        proportional, reference = ctc_cells(model, x, target)
        cam = cam_cell(model, x, target)
        print(f"| {family} | `{name}` | {size}² | {proportional} | {reference} | {cam} |")
        print(f"  ({time.perf_counter() - start:.1f} s)", flush=True)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builders", nargs="+", help="only these builders (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    entries = [
        (family, name, size)
        for family, (name, size) in FAMILIES.items()
        if not args.builders or name in args.builders
    ]
    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}, float64"
    print_table(versions, entries, build, seed=2, target=3)


if __name__ == "__main__":
    main()
