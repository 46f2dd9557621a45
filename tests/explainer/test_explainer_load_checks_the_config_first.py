"""``Explainer.load`` checks a file's config against its state dict before building it.

A file of a few kilobytes whose config said ``num_classes=20_000_000`` built that network (0.7 GB
more) before "does not fit its config"; a config entry ``weights`` had the builder open another
file, which ``save`` never writes.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin import Explainer
from ctc_plugin.explainer import backbones
from ctc_plugin.explainer.backbones import build_backbone


def _saved(tmp_path, **config):
    torch.manual_seed(0)
    path = tmp_path / "e.pt"
    Explainer(build_backbone("unet-small", 3, width=2, depth=2), 3).save(path)
    payload = torch.load(path, weights_only=True)
    payload["config"].update(config)
    torch.save(payload, path)
    return path


def test_a_config_of_another_size_is_refused_without_building_it(tmp_path, monkeypatch):
    path = _saved(tmp_path, num_classes=2_000_000)
    devices = []
    real = backbones.build_backbone

    def spy(*args, **kwargs):
        devices.append(torch.empty(0).device.type)
        return real(*args, **kwargs)

    monkeypatch.setattr(backbones, "build_backbone", spy)
    with pytest.raises(ValueError, match=r"does not fit its config .* in the file, .* config"):
        Explainer.load(path)
    assert devices == ["meta"]


def test_a_config_naming_a_weights_file_is_refused(tmp_path):
    path = _saved(tmp_path, weights=str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="holds weights, which Explainer.save never writes"):
        Explainer.load(path)


def test_a_file_that_fits_loads_as_saved(tmp_path):
    path = _saved(tmp_path)
    torch.manual_seed(0)
    saved = Explainer(build_backbone("unet-small", 3, width=2, depth=2), 3)
    loaded = Explainer.load(path)
    for key, value in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
