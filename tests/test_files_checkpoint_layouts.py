"""Common checkpoint layouts load; any other dict is refused with its top-level keys.

``torch.save({"state_dict": ...})``, the PyTorch tutorial's ``{"model_state_dict": ...,
"optimizer_state_dict": ..., "epoch": ...}`` and timm's/DeiT's ``{"model": ...}`` all hold a
state dict next to other things; ``read_state_dict`` (and every loader on it) takes it out.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin import zoo
from ctc_plugin.files import read_state_dict


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return zoo.build("vgg", 6).state_dict()


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_a_state_dict_inside_a_checkpoint_loads(tmp_path, key):
    state = _state()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    checkpoint = {key: state, "optimizer": optimizer.state_dict(), "epoch": 300, "args": None}
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    loaded = read_state_dict(tmp_path / "checkpoint.pth")
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    model = zoo.load("vgg", weights=tmp_path / "checkpoint.pth")  # a loader built on it
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)


def test_a_plain_state_dict_with_a_key_named_model_is_itself(tmp_path):
    state = {"model": torch.ones(2), "head.weight": torch.zeros(3)}
    torch.save(state, tmp_path / "plain.pt")
    assert read_state_dict(tmp_path / "plain.pt").keys() == state.keys()


def test_another_layout_is_refused_with_its_top_level_keys(tmp_path):
    torch.save({"net": _state(), "epoch": 3, "optimizer": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError) as caught:
        read_state_dict(tmp_path / "other.pt")
    message = str(caught.value)
    assert "does not hold a state dict" in message
    assert "top-level keys are 'net', 'epoch', 'optimizer'" in message
    assert "'model_state_dict'" in message  # the keys that would have worked


def test_something_else_than_a_dict_is_named(tmp_path):
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not hold a state dict .*: it holds a list"):
        read_state_dict(tmp_path / "list.pt")
