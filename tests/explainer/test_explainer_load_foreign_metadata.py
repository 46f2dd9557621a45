"""An explainer file whose metadata is no dict, or whose state holds a non-tensor, is refused
with the file named."""

from __future__ import annotations

import pytest
import torch

from ctc_plugin import Explainer
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.network import FILE_FORMAT


def written(tmp_path, **changes) -> str:
    explainer = Explainer(build_backbone("unet-small", 6, width=4), 6)
    payload = {
        "format": FILE_FORMAT,
        "config": {"num_classes": 6, "backbone": "unet-small", "width": 4},
        "state_dict": explainer.state_dict(),
        "metadata": {},
    }
    payload.update(changes)
    path = str(tmp_path / "explainer.pt")
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("metadata", [None, [1, 2], "hello"])
def test_metadata_that_is_no_dict_is_refused_naming_the_file(tmp_path, metadata):
    """TypeError 'NoneType' object is not iterable, or a ValueError about a dictionary update
    sequence, named no file."""
    path = written(tmp_path, metadata=metadata)
    with pytest.raises(ValueError, match=f"explainer file '{path}': its metadata is no dict"):
        Explainer.load(path)


def test_an_entry_that_is_no_tensor_is_named_as_such(tmp_path):
    """It was reported as missing."""
    state = Explainer(build_backbone("unet-small", 6, width=4), 6).state_dict()
    name = next(key for key in state if key.endswith("weight"))
    state[name] = 5
    with pytest.raises(ValueError, match=rf"{name} is no tensor of .* \(it holds int\)"):
        Explainer.load(written(tmp_path, state_dict=state))
