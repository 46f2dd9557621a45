"""Estimate each zoo model's training time from CPU seconds, robust to a shared machine.

Wall-clock times of ``ctc-plugin zoo train`` depend on what else runs on the machine; the CPU
time of one process does much less. This script measures, with one torch thread, the CPU
seconds to render training images and to run training steps, and extrapolates to the default
run (5,000 images, 4 epochs of batch 64). Run: ``python docs/scripts/time_training.py``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ctc_plugin.datasets import ShapesDataset
from ctc_plugin.zoo import FAMILIES, build
from ctc_plugin.zoo.training import training_config


def cpu_seconds(function, repeats: int) -> float:
    """Return the CPU seconds one call of ``function`` takes, averaged over ``repeats``."""
    function()  # warm-up
    start = time.process_time()
    for _ in range(repeats):
        function()
    return (time.process_time() - start) / repeats


def main() -> None:
    """Print the estimated training time of every family."""
    torch.set_num_threads(1)
    config = training_config(FAMILIES[0])
    data = ShapesDataset("shapes", size=200, seed=0)
    render = cpu_seconds(lambda: data.tensors(), 1) / 200 * config.size
    images, labels = data.tensors()
    x, y = images[: config.batch_size], labels[: config.batch_size]
    print(f"rendering {config.size} images: {render:.0f} CPU s")
    print("| family | CPU s / step | estimated training (CPU s) |")
    print("|---|---|---|")
    for family in FAMILIES:
        model = build(family, 6).train()
        optimizer = torch.optim.Adam(model.parameters())

        def step(model=model, optimizer=optimizer) -> None:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        per_step = cpu_seconds(step, 10)
        family_config = training_config(family)
        steps = family_config.epochs * -(-family_config.size // family_config.batch_size)
        print(f"| {family} | {per_step:.2f} | {render + steps * per_step:.0f} |")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    main()
