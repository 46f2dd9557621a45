"""Integrative CAM refuses a channels-last batch (N, H, W, C) as CTC and the segmenters do.

The first convolution that runs tells the channel count; a batch whose last dimension has it
and whose dimension 1 does not gets the same ``ValueError`` (with ``x.permute(0, 3, 1, 2)``)
instead of torch's ``RuntimeError`` from inside the model, and so does a batch of another
channel count (grayscale: ``x.expand(-1, 3, -1, -1)``, RGBA: ``x[:, :3]``); the model is left
as it was. A mismatch the model makes itself reaches the model.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC, IntegrativeCAM
from ctc_plugin.testing import RandomCNN

MESSAGE = (
    r"must be a batch of images \(N, 3, H, W\), got shape \(2, 16, 16, 3\); it looks "
    r"channels-last: x\.permute\(0, 3, 1, 2\)"
)


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def _channels_last() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).permute(0, 2, 3, 1)


def test_a_channels_last_batch_gets_the_message_ctc_gives():
    model = RandomCNN(seed=0).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = _channels_last()
    with pytest.raises(ValueError, match=r"images " + MESSAGE):
        CTC(model).attribute(x, target=0)  # its superpixel segmenter knows 3 channels
    with pytest.raises(ValueError, match=r"^inputs " + MESSAGE):
        IntegrativeCAM(model).attribute(x, target=0)
    with pytest.raises(ValueError, match=r"^inputs\[0\] " + MESSAGE):
        IntegrativeCAM(model).attribute((x,), target=0)
    with pytest.raises(ValueError, match=r"^inputs " + MESSAGE):  # behind a plain function
        IntegrativeCAM(lambda images: model(images)).attribute(x, target=0)
    assert _hooks(model) == 0 and not model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    maps = IntegrativeCAM(model).attribute(x.permute(0, 3, 1, 2), target=0)  # the fix works
    assert maps.shape == (2, 1, 16, 16)


class _TakesChannelsLast(nn.Module):
    """A model whose own forward turns (N, H, W, C) into (N, C, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x.permute(0, 3, 1, 2))).mean(dim=(2, 3)))


def test_a_model_that_takes_channels_last_is_explained():
    torch.manual_seed(0)
    maps = IntegrativeCAM(_TakesChannelsLast().eval()).attribute(_channels_last(), target=1)
    assert maps.shape == (2, 1, 16, 3)  # the last two dimensions of the inputs


@pytest.mark.parametrize(
    ("channels", "fix"), [(1, r"x\.expand\(-1, 3, -1, -1\)"), (4, r"x\[:, :3\]"), (2, r"\)$")]
)
def test_a_batch_of_another_channel_count_gets_the_message_and_its_fix(channels, fix):
    model = RandomCNN(seed=0).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    message = rf"^inputs must be a batch of images \(N, 3, H, W\), got shape \(2, {channels}, "
    with pytest.raises(ValueError, match=message) as error:
        IntegrativeCAM(model).attribute(torch.rand(2, channels, 16, 16), target=0)
    assert error.match(fix)
    assert _hooks(model) == 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


class _Doubles(nn.Module):
    """A model whose own forward gives its first convolution the wrong channel count."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x, x], dim=1)).mean(dim=(2, 3))


def test_a_mismatch_inside_the_model_still_reaches_the_model():
    with pytest.raises(RuntimeError, match="expected input.* to have 3 channels"):
        IntegrativeCAM(_Doubles().eval()).attribute(torch.rand(2, 3, 16, 16), target=0)
