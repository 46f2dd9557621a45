"""State dicts saved from wrapped models (DataParallel, DDP, torch.compile) load like plain ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import zoo
from ctc_plugin.files import unwrapped_state
from ctc_plugin.zoo import loading


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_a_zoo_model_saved_through_a_wrapper_loads(tmp_path, prefix):
    shipped = zoo.load("densenet")
    path = tmp_path / "wrapped.pt"
    torch.save(_prefixed(shipped.state_dict(), prefix), path)
    loaded = zoo.load("densenet", weights=path)
    for key, value in shipped.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_dataparallel_torchvision_file_with_its_own_head_loads(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    network = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / "dp.pt"
    torch.save(nn.DataParallel(network).state_dict(), path)
    loaded = zoo.load_torchvision("resnet18", path)
    assert loaded.fc.out_features == 7
    assert torch.equal(loaded.fc.weight, network.fc.weight)


def test_a_model_with_a_submodule_called_module_keeps_its_keys(tmp_path):
    model = nn.Sequential()
    model.add_module("module", nn.Linear(2, 2))
    state = model.state_dict()
    assert unwrapped_state(model, state) is state
    loading.load_state_into(nn.Sequential(), {}, tmp_path / "x.pt")  # empty: nothing to strip
    with pytest.raises(ValueError, match="do not fit"):
        loading.load_state_into(model, _prefixed(nn.Linear(2, 2).state_dict(), "other."), tmp_path)


def test_the_callers_state_dict_is_left_as_it_was():
    model = nn.Linear(2, 2)
    state = _prefixed(model.state_dict(), "module.")
    keys = list(state)
    assert list(unwrapped_state(model, state)) == ["weight", "bias"]
    assert list(state) == keys


@pytest.mark.parametrize("holder", ["model.", "net."])
def test_a_training_frameworks_holder_prefix_is_dropped_when_the_rest_is_the_model(holder):
    """A Lightning module holding the model as ``self.model`` saves ``model.weight``."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    state = _prefixed(model.state_dict(), holder)
    assert list(unwrapped_state(model, state)) == list(model.state_dict())
    extra = {**state, f"{holder}head.weight": torch.zeros(1)}  # not exactly the model: kept
    assert unwrapped_state(model, extra) is extra


def test_a_lightning_module_that_holds_more_than_the_model_loads_the_model():
    """``loss_fn.weight`` beside ``model.*``: the checkpoint was refused as 123 unexpected keys."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    state = {**_prefixed(model.state_dict(), "model."), "loss_fn.weight": torch.ones(3)}
    unwrapped = unwrapped_state(model, state)
    assert list(unwrapped) == list(model.state_dict())
    assert all(torch.equal(unwrapped[k], v) for k, v in model.state_dict().items())


def test_two_holders_of_the_model_are_not_chosen_between():
    """``model.`` and ``ema_model.``: the alphabetically first was taken, without a word."""
    model = nn.Linear(2, 2)
    state = {**_prefixed(model.state_dict(), "model."), **_prefixed(model.state_dict(), "ema.")}
    assert unwrapped_state(model, state) is state
