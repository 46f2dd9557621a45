"""A damaged ``.safetensors`` file is named as one, not as "not a file written by torch.save".

``torch.load`` reads ``.safetensors`` files through the safetensors package, so an intact one
loads like a state dict; a truncated or corrupt one fails in that package's reader, and the
message says which kind of file it is.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin import zoo
from ctc_plugin.files import read_state_dict

safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.fixture
def saved(tmp_path):
    state = zoo.build("vgg", 6).state_dict()
    path = tmp_path / "vgg.safetensors"
    safetensors_torch.save_file(state, path)
    return path, state


def test_an_intact_safetensors_file_loads(saved):
    path, state = saved
    loaded = read_state_dict(path)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize("cut", [5, 1000, 0.5])
def test_a_truncated_safetensors_file_is_named_as_one(saved, cut):
    path, _ = saved
    data = path.read_bytes()
    keep = int(len(data) * cut) if isinstance(cut, float) else len(data) - cut
    path.write_bytes(data[:keep])
    with pytest.raises(ValueError) as caught:
        read_state_dict(path)
    message = str(caught.value)
    assert message.startswith(f"could not read weights from {path}: it is a truncated or corrupt")
    assert "safetensors file" in message
    assert "not a file written by torch.save" not in message


def test_a_corrupt_safetensors_header_is_named_as_one(saved):
    path, _ = saved
    data = bytearray(path.read_bytes())
    data[8] = ord("[")  # the JSON header must be an object
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="it is a truncated or corrupt safetensors file"):
        zoo.load("vgg", weights=path)
