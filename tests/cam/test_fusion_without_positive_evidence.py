"""Fusing stage maps when an example's stage scores are all zero (no positive evidence).

``RunningFusion``'s contract: the fused map is ``minmax(sum_l s_l Up(map_l) / sum_l s_l)``;
where an example's scores sum to zero the stages are averaged uniformly instead, and the
weights ``layer_weights`` reports sum to one per example, 0 for a stage without a map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctc_plugin.cam.fusion import RunningFusion


def _minmax(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(1)
    shifted = flat - flat.min(1, keepdim=True).values
    return (shifted / (1e-7 + shifted.max(1, keepdim=True).values)).view_as(m)


def _maps():
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(2, 1, 4, 4, generator=generator, dtype=torch.float64)
    fine = torch.rand(2, 1, 8, 8, generator=generator, dtype=torch.float64)
    scores = [torch.tensor([0.0, 0.3], dtype=torch.float64), torch.tensor([0.0, 0.9]).double()]
    return [coarse, fine], scores


def test_an_example_without_evidence_gets_the_uniform_mean_of_its_stages():
    maps, scores = _maps()
    fusion = RunningFusion((8, 8))
    for index, (layer_map, score) in enumerate(zip(maps, scores)):
        fusion.add(index, layer_map, score)
    fused = fusion.result()
    up = [F.interpolate(m, size=(8, 8), mode="bilinear", align_corners=False) for m in maps]
    uniform = _minmax((up[0][:1] + up[1][:1]) / 2)
    weighted = _minmax((0.3 * up[0][1:] + 0.9 * up[1][1:]) / 1.2)
    assert bool(torch.isfinite(fused).all())
    torch.testing.assert_close(fused[:1], uniform)
    torch.testing.assert_close(fused[1:], weighted)


def test_weights_without_evidence_are_uniform_over_the_stages_that_had_a_map():
    maps, scores = _maps()
    fusion = RunningFusion((8, 8), keep_maps=True)
    for index, (layer_map, score) in enumerate(zip(maps, scores)):
        fusion.add(index, layer_map, score)
    # stage 2 never received a gradient: weight 0, and each row still sums to one
    weights = fusion.layer_weights([0, 1, 2], 2)
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(weights, expected)
