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


class PausingAtStart(nn.Module):
    """``TwoScales``, its armed pass waiting before anything runs."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = TwoScales()
        self.pause: tuple[threading.Event, threading.Event] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pause is not None:
            paused, resume = self.pause
            self.pause = None
            paused.set()
            assert resume.wait(TIMEOUT)
        return self.inner(x)


def _with_another_pass(model: PausingAtStart, probe, other: torch.Tensor):
    """``probe()`` while another thread runs ``model(other)`` at the start of its pass."""
    paused, resume = threading.Event(), threading.Event()

    def other_pass() -> None:
        assert paused.wait(TIMEOUT)
        with torch.no_grad():
            model(other)
        resume.set()

    thread = threading.Thread(target=other_pass, daemon=True)
    thread.start()
    model.pause = (paused, resume)
    found = probe()
    thread.join(TIMEOUT)
    return found


def test_the_sanity_checks_call_order_is_its_own_passes():
    from ctc_plugin.evaluation.sanity import _call_order

    model = PausingAtStart().eval()
    images = torch.rand(1, 3, 32, 32)
    alone = _call_order(model, images)
    assert alone == ["", "inner", "inner.first", "inner.second", "inner.head"]
    beside = _with_another_pass(model, lambda: _call_order(model, images), images[..., :8, :8])
    assert beside == alone


def test_the_input_shift_reads_its_own_passes_first_layer_input():
    from ctc_plugin.evaluation.invariance import _first_layer_input

    model = PausingAtStart().eval()
    images = torch.rand(1, 3, 32, 32)
    other = torch.rand(1, 3, 8, 8)
    name, seen = _with_another_pass(model, lambda: _first_layer_input(model, images), other)
    assert name == "inner.first" and torch.equal(seen, images)
