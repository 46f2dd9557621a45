"""How much of Lime's and KernelShap's max-sensitivity is their own sampling noise.

Lime and KernelShap draw random samples in every call. Until the harness seeded each call
(`ctc_plugin.harness.methods.SAMPLING_SEED`, common random numbers), two calls on the same image
gave two different maps, and the benchmark's robustness columns measured that noise too. This
script measures it on a zoo model with the benchmark's settings (superpixel features, 100
samples, 32 perturbations per evaluation, the benchmark's first 96 x 96 images of seed 2026, 4
noise samples): max-sensitivity at radius 0 (no perturbation at all: the noise floor) and at the
benchmark's radius 0.02, each drawn as the published runs drew (``unseeded``) and as the harness
draws now (``seeded``). FeatureAblation, which draws nothing, is the control::

    nice -n 10 python benchmarks/bench_sampling_noise.py --family resnet --images 24 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
from quick_defaults import parse_with_quick

from ctc_plugin import zoo
from ctc_plugin.datasets import ShapesDataset
from ctc_plugin.evaluation.sensitivity import max_sensitivity
from ctc_plugin.features import SuperpixelSegmenter
from ctc_plugin.harness.benchmark import BenchmarkConfig
from ctc_plugin.harness.methods import _captum_features
from ctc_plugin.method_calls import FEATURE_ABLATION, KERNEL_SHAP, LIME
from ctc_plugin.resumable.threads import torch_threads


def main() -> None:
    """Print the mean max-sensitivity of each method and drawing at radius 0 and 0.02."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="resnet", help="zoo family (default: resnet)")
    parser.add_argument("--split", default="shapes", help="zoo split (default: shapes)")
    parser.add_argument("--images", type=int, default=24, help="test images (default: 24)")
    parser.add_argument("--samples", type=int, default=100, help="Lime/KernelShap samples")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="4 images and 20 samples")
    args = parse_with_quick(parser, images=4, samples=20)

    model = zoo.load(args.family, split=args.split)
    data = ShapesDataset(split=args.split, size=args.images, seed=BenchmarkConfig.seed)
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    labels = torch.tensor([int(data[i]["label"]) for i in range(len(data))])
    mask = SuperpixelSegmenter()(images)
    methods = {}
    for sampler in (LIME, KERNEL_SHAP):  # the benchmark's settings, with --samples
        seeded = sampler.but(n_samples=args.samples)
        methods[(sampler.name, "unseeded")] = _captum_features(seeded.but(sampling_seed=None))
        methods[(sampler.name, "seeded")] = _captum_features(seeded)
    methods[("FeatureAblation", "-")] = _captum_features(FEATURE_ABLATION)
    print(f"{args.family}/{args.split}, {len(images)} images, {args.samples} samples")
    print("| method | drawing | max_sens, radius 0 | max_sens, radius 0.02 | seconds |")
    print("|---|---|---|---|---|")
    torch.manual_seed(0)
    with torch_threads(args.threads):
        for (name, drawing), method in methods.items():
            started = time.perf_counter()
            row = [
                float(max_sensitivity(method, model, images, labels, mask, radius, 4).mean())
                for radius in (0.0, 0.02)
            ]
            seconds = time.perf_counter() - started
            print(f"| {name} | {drawing} | {row[0]:.3f} | {row[1]:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
