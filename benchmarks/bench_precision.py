"""How far CTC's feature scores in float32, float16 and bfloat16 lie from float64's.

python benchmarks/bench_precision.py [--model resnet18] [--size 32]

A torchvision model with random weights, made non-trivial (BatchNorm statistics, biases and
norm weights drawn at random, as a trained network has them), explains two random images on a
3 x 3 grid of features in float64 and in each lower precision. Printed per mode and dtype: the
largest difference of the scores from float64's, relative to float64's largest score, and for
``"proportional"`` how far the scores' sum lies from the model's own logit in that dtype.
``"reference"`` quantises pre-activations (``ceil(10 z)``), so a rounding difference of one ulp
can move a value across a step; the other modes are linear in the rounding.

A second table does the same within float32 for what changes the roundings of the model's own
arithmetic: the copies in chunks of 4 (``perturbations_per_eval=4``) against one pass (in
``"reference"`` mode only: ``"proportional"`` takes every copy in one pass and ``"none"`` is one
forward and one backward pass, whatever ``perturbations_per_eval`` says), and the first image
explained alone against in the batch of two.

A third table shows how well the model conditions the scores, in float64: how far they move when
the images are multiplied by ``1 + 1e-12`` (a change far below any image format's resolution),
relative to the largest score. Where it is large, the float64 scores carry that much noise too.

``--formulas`` prints instead how far the float32 ``"reference"`` scores of the compiled
formula (`Speedups.native_formula`, whose ``log10`` and ``exp2`` round as the C library's do)
lie from those of torch's formula and of the spec pass, on the same images with a 4 x 4 grid.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torchvision

from ctc_plugin import CTC
from ctc_plugin.testing import randomise_statistics_and_biases


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest difference relative to the largest expected value."""
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def compare_formulas(name: str, size: int) -> None:
    """Print the compiled and torch's float32 ``"reference"`` formulas against each other."""
    import dataclasses

    from ctc_plugin.ctc import native
    from ctc_plugin.ctc.speedups import DEFAULT, SPEC

    reason = native.unavailable_reason()
    if reason is not None:
        raise SystemExit(f"the compiled formula is not available here: {reason}")
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    model = randomise_statistics_and_biases(model).eval()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    rows = torch.arange(size) * 4 // size
    mask = (rows.view(-1, 1) * 4 + rows.view(1, -1)).view(1, 1, size, size)
    scores = {}
    for label, speedups in (
        ("compiled", dataclasses.replace(DEFAULT, native_formula=True)),
        ("torch", dataclasses.replace(DEFAULT, native_formula=False)),
        ("spec", SPEC),
    ):
        ctc = CTC(model, bias_sharing="reference")
        ctc._speedups = speedups
        scores[label] = ctc.attribute(x, 3, feature_mask=mask, return_feature_scores=True)[1]
    print(f'{name}, 2 images of {size}x{size}, 16 features, float32 "reference"')
    for label, first, second in (
        ("compiled vs torch's formula", "compiled", "torch"),
        ("compiled vs spec pass", "compiled", "spec"),
        ("torch's vs spec pass", "torch", "spec"),
    ):
        print(f"{label:28s} {relative(scores[first].scores, scores[second].scores):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="a torchvision builder")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--quick", action="store_true", help="the same run (it takes seconds)")
    parser.add_argument(
        "--formulas",
        action="store_true",
        help='compiled against torch\'s float32 "reference" formula, instead of the dtypes',
    )
    args = parser.parse_args()
    if args.formulas:
        compare_formulas(args.model, args.size)
        return
    torch.manual_seed(0)
    model64 = torchvision.models.get_model(args.model, weights=None, num_classes=10)
    model64 = randomise_statistics_and_biases(model64).eval().double()
    x = torch.rand(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(2))
    x = x.double()
    rows = torch.arange(args.size) * 3 // args.size
    mask = (rows.view(-1, 1) * 3 + rows.view(1, -1)).view(1, 1, args.size, args.size)
    target = 3
    print(
        f"{args.model}, 2 images of {args.size}x{args.size}, 9 features, torch {torch.__version__}"
    )
    print(f"{'mode':14s} {'dtype':10s} {'scores vs float64':>18s} {'sum vs own logit':>17s}")
    for mode in ("proportional", "reference", "none"):
        _, exact = CTC(model64, bias_sharing=mode).attribute(
            x, target, feature_mask=mask, return_feature_scores=True
        )
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            model = copy.deepcopy(model64).to(dtype)
            _, scores = CTC(model, bias_sharing=mode).attribute(
                x.to(dtype), target, feature_mask=mask, return_feature_scores=True
            )
            completeness = ""
            if mode == "proportional":
                with torch.no_grad():
                    logit = model(x.to(dtype))[:, target].double()
                completeness = f"{relative(scores.scores.double().sum(1), logit):17.1e}"
            error = relative(scores.scores.double(), exact.scores)
            print(f"{mode:14s} {str(dtype)[6:]:10s} {error:18.1e} {completeness:>17s}")
    print(f"\nfloat32 {'mode':14s} {'chunks of 4 vs one pass':>24s} {'alone vs in batch':>18s}")
    model, x32 = copy.deepcopy(model64).float(), x.float()
    for mode in ("proportional", "reference", "none"):
        ctc = CTC(model, bias_sharing=mode)
        one = ctc.attribute(x32, target, feature_mask=mask, return_feature_scores=True)[1].scores
        # "proportional" takes every copy in one pass and "none" is one forward and one backward
        # pass, whatever perturbations_per_eval says: only "reference" has chunks to compare
        chunked = "one pass"
        if mode == "reference":
            _, scores = ctc.attribute(
                x32, target, feature_mask=mask, perturbations_per_eval=4, return_feature_scores=True
            )
            chunked = f"{relative(scores.scores, one):24.1e}"
        alone = ctc.attribute(x32[:1], target, feature_mask=mask, return_feature_scores=True)[1]
        print(f"        {mode:14s} {chunked:>24s} {relative(alone.scores, one[:1]):18.1e}")
    print(f"\nfloat64 {'mode':14s} {'images x (1 + 1e-12)':>24s}")
    for mode in ("proportional", "reference", "none"):
        ctc = CTC(model64, bias_sharing=mode)
        exact = ctc.attribute(x, target, feature_mask=mask, return_feature_scores=True)[1].scores
        moved = ctc.attribute(
            x * (1 + 1e-12), target, feature_mask=mask, return_feature_scores=True
        )[1].scores
        print(f"        {mode:14s} {relative(moved, exact):24.1e}")


if __name__ == "__main__":
    main()
