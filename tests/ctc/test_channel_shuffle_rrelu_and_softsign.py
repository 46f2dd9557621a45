"""``channel_shuffle``, eval-mode ``rrelu`` and ``softsign`` have rows, exact against their
definitions; ``lp_pool`` and ``local_response_norm`` stay refused with what to do.

Each model is compared in float64, in every bias sharing, with the same model written with
the operations its part is defined by: a shuffle as ``view``/``transpose``/``reshape``,
``RReLU`` in eval mode as ``LeakyReLU`` of the mean slope ``(lower + upper) / 2``, ``Softsign``
as ``h / (|h| + 1)``. All three were refused ("no CTC rule is defined for it").
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ctc_plugin import CTC, TrainingModeError, UnsupportedOperationError
from ctc_plugin.testing import random_partition

MODES = ["reference", "proportional", "none"]


class _Net(nn.Module):
    """Two convolutions with ``body`` (a module, or a function of the map) between them."""

    def __init__(self, body) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1)
        self.body, self.head = body, nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv1(x))
        return self.head(F.relu(self.conv2(h)).mean(dim=(2, 3)))


def _scores(body, mode: str) -> torch.Tensor:
    model = _Net(body).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = x - 0.5  # negative pre-activations too
    mask = random_partition(8, 8, 4)
    _, scores = CTC(model, bias_sharing=mode).attribute(
        x, target=1, feature_mask=mask, return_feature_scores=True
    )
    return scores.scores


def _shuffled(h: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, height, width = h.shape
    return (
        h.view(n, groups, c // groups, height, width).transpose(1, 2).reshape(n, c, height, width)
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "shuffle",
    [nn.ChannelShuffle(2), lambda h: torch.channel_shuffle(h, 2)],
    ids=["module", "torch.channel_shuffle"],
)
def test_channel_shuffle_is_the_permutation_it_is(mode, shuffle):
    expected = _scores(_shuffled, mode)
    torch.testing.assert_close(_scores(shuffle, mode), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_rrelu_in_eval_mode_is_leaky_relu_of_the_mean_slope(mode):
    expected = _scores(nn.LeakyReLU((0.1 + 0.3) / 2), mode)
    torch.testing.assert_close(_scores(nn.RReLU(0.1, 0.3), mode), expected, rtol=0, atol=1e-12)
    defaults = _scores(lambda h: F.rrelu(h), mode)  # lower 1/8, upper 1/3, training=False
    torch.testing.assert_close(defaults, _scores(nn.LeakyReLU((1 / 8 + 1 / 3) / 2), mode))
    in_place = _scores(lambda h: torch.rrelu_(h.clone(), 0.1, 0.3), mode)
    torch.testing.assert_close(in_place, expected, rtol=0, atol=1e-12)


def test_rrelu_in_training_mode_is_refused_as_random():
    x = torch.rand(1, 3, 8, 8)
    mask = random_partition(8, 8, 4)
    model = _Net(nn.RReLU()).train()
    with pytest.raises(TrainingModeError, match=r"RReLU 'body' is in training mode"):
        CTC(model).attribute(x, target=1, feature_mask=mask)
    model = _Net(lambda h: F.rrelu(h, training=True)).eval()
    with pytest.raises(UnsupportedOperationError, match=r"rrelu in the model \(_Net\): it is "):
        CTC(model).attribute(x, target=1, feature_mask=mask)


@pytest.mark.parametrize("mode", MODES)
def test_softsign_is_a_rescale_gate_as_written_out(mode):
    expected = _scores(lambda h: h / (h.abs() + 1), mode)
    torch.testing.assert_close(_scores(nn.Softsign(), mode), expected, rtol=0, atol=1e-12)


def test_a_softsign_output_is_a_gate_tensor():
    """As tanh's: it may multiply the signal (a gated unit), and the scores still add up."""
    model = _Net(lambda h: h * F.softsign(h)).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, scores = CTC(model).attribute(
        x, target=1, feature_mask=random_partition(8, 8, 4), return_feature_scores=True
    )
    torch.testing.assert_close(scores.scores.sum(1), model(x)[:, 1].detach())


@pytest.mark.parametrize(
    ("body", "advice"),
    [
        (nn.LPPool2d(2, 3, stride=1), r"lp_pool2d in body.0 \(LPPool2d\): .*power mean"),
        (nn.LocalResponseNorm(3), r"local_response_norm in body.0 \(LocalResponseNorm\): .*"),
    ],
    ids=["lp_pool2d", "local_response_norm"],
)
def test_lp_pooling_and_local_response_norm_are_refused_with_what_to_do(body, advice):
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(UnsupportedOperationError, match=advice) as error:
        CTC(_Net(nn.Sequential(body, nn.Upsample(size=(8, 8)))).eval()).attribute(
            x, target=1, feature_mask=random_partition(8, 8, 4)
        )
    assert "instead" in str(error.value)
