"""``zoo.train`` and ``zoo.evaluate`` send each batch to the device of the model's parameters.

The images are made on the CPU; a model on a GPU got them there and failed. Without a GPU, a
spy whose first parameter lives on the ``meta`` device records where its inputs arrive (its
outputs come from an ordinary CPU layer, so the loss, the optimiser and the accuracy still work).
The same calls on a real CUDA model are in ``tests/test_cuda.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from ctc_plugin import zoo
from ctc_plugin.zoo.settings import TrainConfig


class _Spy(nn.Module):
    """Records the device of each input; its first parameter is on ``meta``."""

    def __init__(self) -> None:
        super().__init__()
        self.placed = nn.Parameter(torch.zeros(1, device="meta"))  # the model's device
        self.head = nn.Linear(1, 6)
        self.devices: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.devices.append(x.device.type)
        return self.head(torch.ones(len(x), 1))


def test_evaluate_sends_each_batch_to_the_model():
    spy = _Spy()
    accuracy = zoo.evaluate(spy, "shapes", size=4, seed=2, batch_size=2)
    assert spy.devices == ["meta", "meta"]
    assert 0.0 <= accuracy <= 1.0


def test_train_sends_each_batch_to_the_model():
    spy = _Spy()
    config = TrainConfig(size=4, epochs=1, batch_size=2, image_size=32)
    assert zoo.train(spy, "shapes", config, show_progress=False) is spy
    assert spy.devices == ["meta", "meta"]
    assert spy.placed.device.type == "meta" and not spy.training


def test_a_cpu_model_trains_as_before():
    torch.manual_seed(0)
    model = zoo.build("vgg", 6)
    config = TrainConfig(size=4, epochs=1, batch_size=4, image_size=32)
    zoo.train(model, "shapes", config, show_progress=False)
    assert next(model.parameters()).device.type == "cpu"
    assert 0.0 <= zoo.evaluate(model, "shapes", size=4, seed=2) <= 1.0
