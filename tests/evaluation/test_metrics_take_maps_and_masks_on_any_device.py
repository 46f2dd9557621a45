"""Maps on a GPU and masks loaded from disk (on the CPU), or the other way round.

The evaluation computes on the CPU and returns its scores there, as the faithfulness curves
and the sensitivity do: the shared input checks (``as_maps``, ``as_masks``) move maps and
masks to the CPU, so that no metric meets two devices, and a protocol's distances sit with its
``kept`` flags on the CPU. CUDA is faked (``FakeTensorMode``: shapes and devices, no GPU; the
checks' ``.all()`` reads, which fake tensors cannot answer, pass).
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from ctc_plugin.evaluation.localisation import (
    binarize,
    f1,
    iou,
    pointing_game,
    relevance_mass_accuracy,
)
from ctc_plugin.evaluation.protocol import explanation_distance

SHAPE = (2, 8, 8)


@pytest.fixture
def fake_cuda(monkeypatch):
    """A fake tensor mode in which ``device="cuda"`` works without a GPU."""
    monkeypatch.setattr(FakeTensor, "__bool__", lambda self: True)  # every check passes
    return FakeTensorMode(allow_non_fake_inputs=True)


def _evidence(device: str) -> torch.Tensor:
    masks = torch.zeros(SHAPE, dtype=torch.bool, device=device)
    masks[:, 2:5, 2:5] = True
    return masks


@pytest.mark.parametrize("metric", [pointing_game, relevance_mass_accuracy, iou, f1])
@pytest.mark.parametrize(("maps_on", "masks_on"), [("cuda", "cpu"), ("cpu", "cuda")])
def test_localisation_scores_maps_and_masks_on_different_devices(
    fake_cuda, metric, maps_on, masks_on
):
    with fake_cuda:
        maps = torch.rand(SHAPE, dtype=torch.float64, device=maps_on)
        if metric in (iou, f1):
            maps = maps > 0.5
        scores = metric(maps, _evidence(masks_on))
    assert scores.device.type == "cpu"
    assert scores.shape == (SHAPE[0],)


def test_binarize_returns_masks_on_the_cpu_with_or_without_pixels(fake_cuda):
    with fake_cuda:
        kept = binarize(torch.rand(SHAPE, device="cuda"), 0.5)
        empty = binarize(torch.rand(0, 8, 8, device="cuda"), 0.5)
    assert kept.device.type == "cpu" and empty.device.type == "cpu"


def test_explanation_distance_of_cuda_maps_is_on_the_cpu(fake_cuda):
    """``run_protocol`` keeps ``kept`` on the CPU, and ``welch_test`` reads both with NumPy."""
    with fake_cuda:
        first, second = torch.rand(SHAPE, device="cuda"), torch.rand(SHAPE, device="cuda")
        distances = explanation_distance(first, second)
    assert distances.device.type == "cpu"


def test_scores_on_the_cpu_equal_the_scores_of_the_same_values():
    """Moving changes no value: scores of CPU inputs, as they were."""
    maps = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    masks = _evidence("cpu")
    assert pointing_game(maps, masks).tolist() == [
        float(maps[i][masks[i]].max() == maps[i].max()) for i in range(SHAPE[0])
    ]
    inside = (maps * masks).flatten(1).sum(1) / maps.flatten(1).sum(1)
    torch.testing.assert_close(relevance_mass_accuracy(maps, masks), inside)
