"""zoo.evaluate draws the test images batch by batch, not the whole sample before the first.

It rendered every image first: ``ctc-plugin zoo eval resnet --size 100000`` asked for 11 GB
(100,000 float32 images of 3x96x96) before the model saw one. Now it holds one batch at a time.
"""

from __future__ import annotations

import torch
from torch import nn

import ctc_plugin.datasets.dataset as dataset
from ctc_plugin import zoo


class _Counting(nn.Module):
    """Answers class 0, and records how many images were drawn when each batch arrived."""

    def __init__(self, drawn: list[int]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.drawn = drawn
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(len(self.drawn))
        return torch.zeros(len(x), 6) + self.weight


def test_each_batch_is_evaluated_before_the_next_is_drawn(monkeypatch):
    drawn: list[int] = []
    render = dataset.render

    def counting_render(scene):
        drawn.append(1)
        return render(scene)

    monkeypatch.setattr(dataset, "render", counting_render)
    model = _Counting(drawn)
    accuracy = zoo.evaluate(model, "shapes", size=10, seed=3, batch_size=4)
    assert model.seen == [4, 8, 10]
    labels = [dataset.ShapesDataset("shapes", size=10, seed=3).scene(i)[1] for i in range(10)]
    assert accuracy == labels.count(0) / 10
