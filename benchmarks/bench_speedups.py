"""What each speed-up of the CTC pass gains over the spec, measured in one run.

For torchvision models (random weights, eval mode) on the CPU with K grid features, every bias
sharing mode runs as the spec computes it (``ctc_plugin.ctc.speedups.SPEC``), with all speed-ups
(``DEFAULT``), and with all speed-ups but one. Runs are interleaved; each ratio is the median over
repeats of that repeat's own ratio (a slow spell of a shared machine slows a repeat's runs alike):

- ``spec / default``: what all speed-ups together gain;
- ``without X / default``: what speed-up X gains on top of the others (1.00: nothing).

Run: ``python benchmarks/bench_speedups.py [--threads 1] [--repeats 5] [--quick]``
(``--settings resnet18:224:16:1`` picks model:size:K:batch settings).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
import torchvision
from quick_defaults import parse_with_quick

from ctc_plugin import CTC
from ctc_plugin.ctc.speedups import DEFAULT, SPEC, Speedups

SETTINGS = ("resnet18:224:16:1", "resnet18:112:64:1", "resnet50:160:16:1", "resnet18:112:16:8")


def grid_mask(size: int, features: int) -> torch.Tensor:
    """A (1, 1, size, size) grid of ``features`` square cells (``features`` a square number)."""
    side = int(round(features**0.5))
    cell = -(-size // side)
    rows = torch.arange(size) // cell
    return (rows.view(-1, 1) * side + rows.view(1, -1)).view(1, 1, size, size)


def variants(mode: str, batch: int) -> dict[str, Speedups]:
    """The spec, the default and the default without each speed-up that acts in this setting."""
    runs = {"spec": SPEC, "default": DEFAULT}
    without = {"fused sharing": {"fused_sharing": False}}
    if mode == "reference":
        without["sharing blocks"] = {"block_elements": None}
        without["packed boxes"] = {"packed_boxes": 0.0}
        without["compiled formula"] = {"native_formula": False}
    if mode == "proportional":
        without["shares on rows"] = {"proportional_rows": 0.0}
    if mode == "none":
        without = {"gradient shortcut": {"gradient_shortcut": False}, **without}
    if batch > 1:
        without["copies per pass"] = {"copies_per_pass": None}
    for name, change in without.items():
        runs[f"without {name}"] = dataclasses.replace(DEFAULT, **change)
    if mode != "none":  # "none" runs the gradient shortcut, whose one copy is dense
        runs["without sparse copies"] = dataclasses.replace(DEFAULT, sparse_copies=False)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", default="reference,proportional,none")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="model:size:K:batch,...")
    parser.add_argument("--quick", action="store_true", help="one small setting, 3 repeats")
    args = parse_with_quick(parser, settings="resnet18:112:16:1", repeats=3)
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads}, repeats={args.repeats}, torch {torch.__version__}")
    for setting in args.settings.split(","):
        name, size, k, batch = setting.split(":")
        size, k, batch = int(size), int(k), int(batch)
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        x, mask = torch.rand(batch, 3, size, size), grid_mask(size, k)
        for mode in args.modes.split(","):
            runs = {}
            for label, speedups in variants(mode, batch).items():
                ctc = CTC(model, bias_sharing=mode)
                ctc._speedups = speedups
                runs[label] = ctc
            timings: dict[str, list[float]] = {label: [] for label in runs}
            for ctc in runs.values():  # warm-up (and scratch buffers)
                ctc.attribute(x, target=0, feature_mask=mask)
            for _ in range(args.repeats):
                for label, ctc in runs.items():
                    start = time.perf_counter()
                    ctc.attribute(x, target=0, feature_mask=mask)
                    timings[label].append(time.perf_counter() - start)
            default = timings["default"]
            print(f"\n{name} {batch}x{size}x{size}, K={k}, {mode!r}")
            print(f"  {'variant':28s} {'median s':>9s} {'/ default (paired)':>19s}")
            for label, times in timings.items():
                ratio = statistics.median(t / d for t, d in zip(times, default))
                print(f"  {label:28s} {statistics.median(times):9.3f} {ratio:19.2f}")


if __name__ == "__main__":
    main()
