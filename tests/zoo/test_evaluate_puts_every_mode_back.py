"""zoo.evaluate puts every module's training flag back, not one flag for the whole model."""

from __future__ import annotations

import torch

from ctc_plugin import zoo


def test_batch_norms_frozen_in_a_training_model_stay_frozen() -> None:
    torch.manual_seed(0)
    model = zoo.build("resnet", 6).train()
    frozen = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for module in frozen:
        module.eval()  # fine-tuning with the statistics frozen
    zoo.evaluate(model, "shapes", size=4, batch_size=2)
    assert model.training and not any(module.training for module in frozen)
