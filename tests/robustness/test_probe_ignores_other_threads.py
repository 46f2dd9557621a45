"""``last_spatial_layer`` and ``grad_cam_layer`` record only their own probe's pass.

Their probe hooks were on every submodule for every thread: another thread's pass through the
model while the probe ran (a model serving requests) was recorded as the probe's, and the
"last" feature map could be that pass's. Here the other pass, of a smaller image, skips the
last convolution: the probe took the first convolution for the model's last feature map.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from ctc_plugin.cam import last_spatial_layer

TIMEOUT = 60.0


class TwoScales(nn.Module):
    """Small images stop after the first convolution; an armed pass waits for another one."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)
        self.pause: tuple[threading.Event, threading.Event] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.first(x)
        if x.shape[-1] > 16:
            y = self.second(y)
        if self.pause is not None:
            paused, resume = self.pause
            self.pause = None
            paused.set()
            assert resume.wait(TIMEOUT)
        return self.head(y.mean(dim=(2, 3)))


def test_another_threads_pass_is_not_taken_for_the_probes():
    model = TwoScales().eval()
    assert last_spatial_layer(model, torch.rand(1, 3, 32, 32)) is model.second
    paused, resume = threading.Event(), threading.Event()

    def other_pass() -> None:
        assert paused.wait(TIMEOUT)
        with torch.no_grad():
            model(torch.rand(1, 3, 8, 8))  # a plain forward: first convolution only
        resume.set()

    thread = threading.Thread(target=other_pass, daemon=True)
    thread.start()
    model.pause = (paused, resume)
    found = last_spatial_layer(model, torch.rand(1, 3, 32, 32))
    thread.join(TIMEOUT)
    assert found is model.second
