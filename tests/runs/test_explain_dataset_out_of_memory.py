"""``explain-dataset`` ends a method that runs out of memory with one line, as ``explain`` does.

Both commands run a method through ``commands.methods.run_for_command`` (once, the dataset
run's copy of that code had no memory case and ended in a traceback of the allocator's
``RuntimeError``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ctc_plugin.cli import main

HERE = "tests.cli.test_cli_own_models_and_photos"  # its out_of_memory_model


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
