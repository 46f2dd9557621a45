"""A method that cannot explain the model is refused before ``--out`` is set up.

The refusal came from the first shard, after ``manifest.json``, ``plan.json`` and ``shards/``
were written, and named the first image as if it were to blame.
"""

from __future__ import annotations

import torch

from ctc_plugin.cli import main
from tests.runs.test_explain_dataset import tiny


def probabilities(classes: int = 3) -> torch.nn.Module:
    """A classifier that ends in a softmax, for ``--model module:callable``."""
    return torch.nn.Sequential(tiny(classes), torch.nn.Softmax(dim=1))


def _run(out, methods, model):
    return [
        "explain-dataset", "shapes", "--images", "2", "--methods", *methods, "--model", model,
        "--segmenter", "grid", "--segments", "4", "--out", str(out), "--no-progress",
    ]  # fmt: skip


def test_grad_cam_on_a_vision_transformer(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_run(out, ["ctc", "gradcam"], "vit")) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("ctc-plugin explain-dataset: error: --methods gradcam: the ")
    assert "transformer blocks' tokens" in error and "shapes-0" not in error
    assert not out.exists()


def test_ctc_on_a_model_that_ends_in_a_softmax(tmp_path, capsys):
    out = tmp_path / "run"
    model = "tests.runs.test_methods_refused_before_the_run_folder:probabilities"
    assert main(_run(out, ["gradcam", "ctc"], model)) == 2
    error = capsys.readouterr().err.strip()
    assert "softmax" in error and "return the logits" in error
    assert not out.exists()
