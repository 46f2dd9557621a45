"""float16 and bfloat16 images in front of a float32 model that normalises them with float32
buffers: torch promotes them to float32 there, so the model computes in float32, and CTC's
scores are those of the same values given as float32 (not rounded to the inputs' format)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition


class _Normalise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.2, 0.3]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@pytest.mark.parametrize("mode", ["none", "proportional", "reference"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scores_are_those_of_the_same_values_in_float32(mode, dtype):
    model = nn.Sequential(
        _Normalise(), RandomCNN(CNNSpec(residual=True, normalise=True), seed=3)
    ).eval()
    x = torch.rand(2, 3, 8, 8).to(dtype)
    assert torch.equal(model(x), model(x.float()))  # the model computes in float32
    mask = random_partition(8, 8, 5, seed=1)
    ctc = CTC(model, bias_sharing=mode)
    _, low = ctc.attribute(x, target=1, feature_mask=mask, return_feature_scores=True)
    _, wide = ctc.attribute(x.float(), target=1, feature_mask=mask, return_feature_scores=True)
    scale = wide.scores.abs().max()
    assert (low.scores.float() - wide.scores).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_none_keeps_its_gradient_shortcut_for_a_model_of_the_inputs_format(dtype, monkeypatch):
    calls = []
    original = CTC._run_gradient_with_progress

    def counting(self, *args, **kwargs):
        calls.append(dtype)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CTC, "_run_gradient_with_progress", counting)
    narrow = RandomCNN(CNNSpec(residual=True), seed=3).eval().to(dtype)
    x = torch.rand(2, 3, 8, 8).to(dtype)
    mask = random_partition(8, 8, 5, seed=1)
    CTC(narrow, bias_sharing="none").attribute(x, target=1, feature_mask=mask)
    assert calls == [dtype]
    wide = nn.Sequential(_Normalise(), RandomCNN(CNNSpec(residual=True), seed=3)).eval()
    CTC(wide, bias_sharing="none").attribute(x, target=1, feature_mask=mask)
    assert calls == [dtype]  # the float32 model took the pass of copies
