"""The zero initial states of ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` are known, not read back.

Called without ``hx`` the modules start from ``torch.zeros`` states. The recurrent rule used to
ask each of them whether it held a nonzero value (``bool(h.any())``), which on a GPU waits for
the device at every layer call (72 waits in one call of timm's Sequencer). The pass now notes
what a zeros factory makes outside the copies (`GatedPass.note_zeros`) and, without host checks
(a GPU's default), the rule takes such a state as zero while its version counter has not moved;
a state written in place after it was made is read and taken as the constant it now holds. On a
CPU (host checks) every state is read, as before.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.rules import GatedPass
from ctc_plugin.ctc.sharing import make_sharing
from ctc_plugin.ctc.speedups import DEFAULT

from .exactness import random_case
from .test_recurrent import HIDDEN, ColumnsThroughRecurrent, _layer
from .test_speedups import _HostReads


class _CountedForward(nn.Module):
    """``model`` whose forward pass (the CTC pass, not the input checks) counts its reads."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.reads = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _HostReads() as counted:
            out = self.model(x)
        self.reads.append(counted.reads)
        return out


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_without_host_checks_a_pass_through_the_modules_zero_states_reads_nothing(
    mode: str, monkeypatch
) -> None:
    """As on a GPU (no host checks): not one wait for the device in the whole pass."""
    model, x, mask = random_case(lambda: ColumnsThroughRecurrent(mode, layers=2))
    counted = _CountedForward(model)
    ctc = CTC(counted, bias_sharing="proportional")
    ctc._speedups = dataclasses.replace(DEFAULT, host_checks=False)
    scores = ctc.attribute(x, target=1, feature_mask=mask)
    assert counted.reads == [0]
    # the same scores as when every state is read (and found zero): h_0 (and c_0) of each layer
    monkeypatch.setattr(GatedPass, "known_zeros", lambda self, value: False)
    read = ctc.attribute(x, target=1, feature_mask=mask)
    assert counted.reads[-1] == (2 if mode == "LSTM" else 1)
    torch.testing.assert_close(scores, read, rtol=0, atol=0)


class _StatesMadeThenWritten(nn.Module):
    """A recurrent layer over the image's columns from states made by ``make``."""

    def __init__(self, make) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.rnn = _layer("LSTM", batch_first=True)
        self.head = nn.Linear(HIDDEN, 3)
        self.make = make

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.stem(x))
        sequence = features.permute(0, 3, 1, 2).flatten(2)
        states = tuple(self.make(sequence) for _ in range(2))
        out, _ = self.rnn(sequence, states)
        return self.head(out.mean(1))


def _zeros_then_filled(sequence: torch.Tensor) -> torch.Tensor:
    state = torch.zeros(1, sequence.shape[0], HIDDEN, dtype=sequence.dtype)
    state[:, :, 1:].fill_(0.3)  # through a view: the version counter is shared
    return state


def _filled(sequence: torch.Tensor) -> torch.Tensor:
    state = torch.full((1, sequence.shape[0], HIDDEN), 0.3, dtype=sequence.dtype)
    state[:, :, 0] = 0.0
    return state


def test_zeros_written_in_place_after_they_were_made_are_read_as_the_constant_they_hold() -> None:
    written_model, x, mask = random_case(lambda: _StatesMadeThenWritten(_zeros_then_filled))
    filled_model, _, _ = random_case(lambda: _StatesMadeThenWritten(_filled))
    zeros_model, _, _ = random_case(
        lambda: _StatesMadeThenWritten(
            lambda sequence: torch.zeros(1, sequence.shape[0], HIDDEN, dtype=sequence.dtype)
        )
    )
    with torch.no_grad():
        assert torch.equal(written_model(x), filled_model(x))
    for mode, host_checks in itertools.product(
        ("proportional", "reference", "none"), (None, False)
    ):
        scores = {}
        for name, model in (
            ("written", written_model),
            ("filled", filled_model),
            ("zeros", zeros_model),
        ):
            ctc = CTC(model, bias_sharing=mode)
            ctc._speedups = dataclasses.replace(DEFAULT, host_checks=host_checks)
            scores[name] = ctc.attribute(x, target=0, feature_mask=mask)
        written, filled, zeros = scores["written"], scores["filled"], scores["zeros"]
        torch.testing.assert_close(written, filled, rtol=0, atol=0)
        assert not torch.equal(written, zeros)  # the constant changed the scores


def test_a_note_holds_for_its_pass_and_its_version_only() -> None:
    layout = CopyLayout(1, 2, reference_full=False, baseline=False)
    first, second = (
        GatedPass(layout=layout, sharing=make_sharing("none"), host_checks=False) for _ in range(2)
    )
    made = torch.zeros(2, 3)
    first.note_zeros(made)
    assert first.known_zeros(made) and not second.known_zeros(made)
    assert not first.known_zeros(torch.zeros(2, 3))  # made outside the pass: not noted
    made[0].add_(0.0)  # any in-place write, even one that keeps the zeros
    assert not first.known_zeros(made)
    with torch.inference_mode():
        inference = torch.zeros(2)
    first.note_zeros(inference)  # keeps no version counter: never noted
    assert not first.known_zeros(inference)
    reading = GatedPass(layout=layout, sharing=make_sharing("none"), token=first.token)
    fresh = torch.zeros(2, 3)
    reading.note_zeros(fresh)
    assert not reading.known_zeros(fresh)  # on a CPU with host checks the value is read
