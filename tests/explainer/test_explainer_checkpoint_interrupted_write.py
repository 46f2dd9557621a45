"""A checkpoint write that is interrupted leaves the previous checkpoint and no stray file."""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.explainer.checkpoints import load_checkpoint
from ctc_plugin.explainer.presets import ExplainerHyperparameters
from tests.explainer.helpers import tiny_classifier, tiny_explainer, tuple_loader


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    real_save, calls = torch.save, []

    def save_then_die(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return real_save(obj, f, *args, **kwargs)
        stream = open(f, "wb") if not hasattr(f, "write") else f  # noqa: SIM115
        stream.write(b"PK\x03\x04 half a checkpoint")
        stream.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        tiny_explainer().fit(
            tiny_classifier().eval(),
            tuple_loader(),
            None,
            ExplainerHyperparameters(lr=1e-2),
            epochs=2,
            checkpoint=checkpoint,
            show_progress=False,
        )
    monkeypatch.undo()
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["checkpoint.pt"]
    assert load_checkpoint(checkpoint)["epoch"] == 1
