"""``load_sam`` reads checkpoints as ``ctc_plugin.files.read_state_dict`` does.

Before, ``load_sam`` unwrapped only ``state["model"]`` itself: a SAM checkpoint saved under
``"state_dict"`` (PyTorch Lightning) was refused although every other weight file of the package
accepts it, and a file holding no state dict got a message without the keys it holds.
"""

import pytest
import torch

from ctc_plugin.adapters.sam import build_tiny_sam, load_sam


@pytest.mark.parametrize("key", ["model", "state_dict", "model_state_dict"])
def test_a_state_dict_under_a_checkpoint_key_loads(tmp_path, key):
    path = tmp_path / "sam_tiny.pth"
    expected = build_tiny_sam().state_dict()
    torch.save({key: expected, "epoch": 3}, path)
    loaded = load_sam(path, "tiny").state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in expected.items())


def test_a_file_without_a_state_dict_lists_what_it_holds(tmp_path):
    path = tmp_path / "sam_tiny.pth"
    torch.save({"epoch": 3, "weights": [1, 2]}, path)
    with pytest.raises(ValueError, match="does not hold a state dict .*'epoch', 'weights'"):
        load_sam(path, "tiny")


@pytest.mark.parametrize("prefix", ["module.", "model."])
def test_a_state_dict_whose_keys_a_wrapper_or_lightning_prefixed_loads(tmp_path, prefix):
    path = tmp_path / "sam_tiny.pth"
    expected = build_tiny_sam().state_dict()
    torch.save({"state_dict": {prefix + name: value for name, value in expected.items()}}, path)
    loaded = load_sam(path, "tiny").state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in expected.items())


def test_a_checkpoint_that_does_not_fit_lists_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "sam_tiny.pth"
    state = build_tiny_sam().state_dict()
    state["extra.key"] = state.pop("image_encoder.pos_embed")
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=r'Missing key.*"image_encoder.pos_embed".*Unexpected key.*"extra.key"'
    ):
        load_sam(path, "tiny")
