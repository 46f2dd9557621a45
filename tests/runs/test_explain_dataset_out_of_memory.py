"""``explain-dataset`` ends a method that runs out of memory with one line, as ``explain`` does.

Both commands run a method through ``commands.methods.run_for_command`` (once, the dataset
run's copy of that code had no memory case and ended in a traceback of the allocator's
``RuntimeError``).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from ctc_plugin.cli import main

HERE = "tests.runs.test_explain_dataset_out_of_memory"


class _OutOfMemory(nn.Module):
    """Classifies one image; a batch of copies (CTC's segments) raises the CPU allocator's error."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (1, 3) of one image."""
        if x.shape[0] > 1:
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                "allocate memory: you tried to allocate 5398069248 bytes."
            )
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def out_of_memory_model() -> nn.Module:
    """``--model`` factory of `_OutOfMemory`."""
    return _OutOfMemory()


def test_explain_dataset_out_of_memory_is_one_line(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "photo.png")
    argv = ["explain-dataset", str(folder), "--methods", "ctc", "--model",
            f"{HERE}:out_of_memory_model", "--resize", "32", "--segmenter", "grid",
            "--segments", "4", "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert "out of memory" in error and "--segments" in error, error
