"""``NoiseTunnel(CTC(model))`` with ``return_feature_scores=True``.

Captum's NoiseTunnel averages tensors; CTC's `FeatureScores` is none, and the call failed inside
Captum with ``AttributeError: 'FeatureScores' object has no attribute 'shape'``. It is refused
before any work, saying what to do: the averaged map holds each feature's averaged score on its
pixels.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import NoiseTunnel

from ctc_plugin import CTC
from ctc_plugin.testing import RandomCNN


def _mask() -> torch.Tensor:
    return (torch.arange(32) // 8).view(1, 1, 1, 32).expand(1, 1, 32, 32).contiguous()


def test_noise_tunnel_with_feature_scores_is_refused_with_what_to_do():
    tunnel = NoiseTunnel(CTC(RandomCNN(seed=1)))
    with pytest.raises(TypeError) as raised:
        tunnel.attribute(
            torch.rand(2, 3, 32, 32), nt_type="smoothgrad", nt_samples=2, stdevs=0.1,
            target=1, feature_mask=_mask(), return_feature_scores=True,
        )  # fmt: skip
    message = str(raised.value)
    assert message.startswith("return_feature_scores=True cannot pass through Captum's NoiseTunnel")
    assert "without it" in message and "each feature's averaged score" in message


def test_the_averaged_map_holds_one_score_per_feature():
    """What the message advises: read each feature's averaged score off the averaged map."""
    torch.manual_seed(0)
    tunnel = NoiseTunnel(CTC(RandomCNN(seed=1)))
    maps = tunnel.attribute(
        torch.rand(2, 3, 32, 32), nt_type="smoothgrad", nt_samples=3, stdevs=0.1,
        target=1, feature_mask=_mask(),
    )  # fmt: skip
    for feature in range(4):
        values = maps[:, :, :, feature * 8 : (feature + 1) * 8].flatten(1)
        torch.testing.assert_close(values, values[:, :1].expand_as(values))


def test_feature_scores_outside_the_tunnel_still_return():
    _, scores = CTC(RandomCNN(seed=1)).attribute(
        torch.rand(2, 3, 32, 32), target=1, feature_mask=_mask(), return_feature_scores=True
    )
    assert scores.scores.shape == (2, 4)
