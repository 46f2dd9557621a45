"""The Explainer network: backbones, local weights only, save / load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.zoo.explainers import load_explainer


def test_unet_small_any_size_at_input_resolution():
    explainer = Explainer(build_backbone("unet-small", 5, width=2), 5).eval()
    out = explainer(torch.rand(2, 3, 37, 45))
    assert out.shape == (2, 5, 37, 45)
    masks = explainer.masks(torch.rand(1, 3, 37, 45))
    assert ((masks >= 0) & (masks <= 1)).all()
    assert not explainer.is_trained and explainer.trained_image_size is None


@pytest.mark.parametrize("depth", [2, 4])
def test_unet_small_depth_adds_resolutions(depth):
    explainer = Explainer(build_backbone("unet-small", 3, width=2, depth=depth), 3).eval()
    assert explainer(torch.rand(1, 3, 41, 35)).shape == (1, 3, 41, 35)
    convs = [m for m in explainer.modules() if isinstance(m, nn.Conv2d)]
    # two convolutions per encoder and decoder level, and the 1x1 head
    assert len(convs) == 2 * depth + 2 * (depth - 1) + 1
    assert max(c.out_channels for c in convs) == 2 * 2 ** (depth - 1)


def test_depth_is_saved_and_checked(tmp_path):
    explainer = Explainer(build_backbone("unet-small", 3, width=2, depth=4), 3)
    loaded = Explainer.load(explainer.save(tmp_path / "e.pt"))
    assert loaded.config()["depth"] == 4 and loaded.backbone.depth == 4
    with pytest.raises(ValueError, match="depth"):
        Explainer(build_backbone("unet-small", 3, depth=1), 3)


def test_input_scale_runs_the_backbone_on_smaller_images(tmp_path):
    seen = []
    explainer = Explainer(build_backbone("unet-small", 3, width=2), 3, input_scale=0.25).eval()
    explainer.backbone.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape))
    assert explainer(torch.rand(2, 3, 96, 64)).shape == (2, 3, 96, 64)  # maps at input size
    assert seen == [(2, 3, 24, 16)]
    loaded = Explainer.load(explainer.save(tmp_path / "e.pt"))
    assert loaded.input_scale == 0.25
    images = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(loaded(images), explainer(images))
    for bad in (0.0, 1.5, float("nan"), True, "0.5"):  # a string failed inside the comparison
        with pytest.raises(ValueError, match=r"input_scale must be a number in \(0, 1\], got "):
            Explainer(build_backbone("unet-small", 3), 3, input_scale=bad)


def test_files_without_input_scale_load_at_full_resolution():
    explainer = load_explainer("vgg", "composite")  # shipped before input_scale existed
    assert explainer.input_scale == 1.0 and explainer.config()["depth"] == 3


@pytest.fixture
def no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3", "deeplabv3_resnet50"])
def test_torchvision_backbones_random_init(name, no_downloads):
    explainer = Explainer(build_backbone(name, 4), 4).eval()
    with torch.no_grad():
        assert explainer(torch.rand(1, 3, 40, 48)).shape == (1, 4, 40, 48)


def test_torchvision_backbone_weights_from_a_local_file(tmp_path, no_downloads):
    from torchvision.models import mobilenet_v3_large

    torch.manual_seed(0)
    source = mobilenet_v3_large(weights=None)
    path = tmp_path / "mobilenet.pt"
    torch.save(source.state_dict(), path)
    explainer = Explainer(build_backbone("lraspp_mobilenet_v3", 4, weights=path), 4)
    torch.testing.assert_close(
        explainer.backbone.backbone["0"][0].weight, source.features[0][0].weight
    )
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        Explainer(build_backbone("lraspp_mobilenet_v3", 4, weights=tmp_path / "missing.pt"), 4)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="do not fit"):
        Explainer(build_backbone("lraspp_mobilenet_v3", 4, weights=tmp_path / "other.pt"), 4)
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(ValueError, match="could not read"):
        Explainer(build_backbone("lraspp_mobilenet_v3", 4, weights=tmp_path / "junk.pt"), 4)


def test_custom_module_backbone_is_resized_and_checked():
    small = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1))
    assert Explainer(small, 4)(torch.rand(1, 3, 32, 32)).shape == (1, 4, 32, 32)
    with pytest.raises(ValueError, match=r"\(N, 5, h, w\)"):
        Explainer(small, 5)(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="saveable"):
        Explainer(small, 4).save("never.pt")


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown Explainer backbone"):
        Explainer(build_backbone("vit", 3), 3)
    with pytest.raises(ValueError, match="num_classes"):
        Explainer(build_backbone("unet-small", 1), 1)


def test_save_and_load_round_trip(tmp_path):
    explainer = Explainer(build_backbone("unet-small", 3, width=2), 3)
    explainer.trained_steps.fill_(4)
    explainer.image_size.copy_(torch.tensor([16, 16]))
    path = explainer.save(tmp_path / "e.pt", metadata={"seed": 1})
    loaded = Explainer.load(path)
    assert loaded.metadata == {"seed": 1} and loaded.is_trained
    assert loaded.trained_image_size == (16, 16)
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(loaded(x), explainer.eval()(x))
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an explainer file"):
        Explainer.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        Explainer.load(tmp_path / "missing.pt")


def test_missing_shipped_explainer_names_the_command(monkeypatch, tmp_path):
    # every zoo model ships a default explainer: pretend the resnet one is missing
    monkeypatch.setattr("ctc_plugin.weights.explainer_path", lambda *args: tmp_path / "none.pt")
    with pytest.raises(FileNotFoundError, match="ctc-plugin explainer train --model resnet"):
        load_explainer("resnet", "composite")


@pytest.mark.parametrize("input_scale", [1.0, 0.5])
def test_target_logits_equal_the_selected_maps_of_forward(input_scale):
    torch.manual_seed(0)
    explainer = Explainer(
        build_backbone("unet-small", 4, width=2), 4, input_scale=input_scale
    ).eval()
    x = torch.rand(3, 3, 20, 20)
    target = torch.tensor([2, 0, 3])
    expected = explainer(x)[torch.arange(3), target].unsqueeze(1)
    torch.testing.assert_close(explainer.target_logits(x, target), expected)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        explainer.target_logits(torch.rand(3, 20, 20), target)


@pytest.mark.parametrize("width", [1, 2, 3, 6, 8])
def test_any_width_builds(width):
    explainer = Explainer(build_backbone("unet-small", 3, width=width), 3)
    assert explainer(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_missing_class_specific_explainer_names_its_command_and_loading():
    with pytest.raises(FileNotFoundError) as error:  # none is shipped for the composite split
        load_explainer("resnet", "composite", "class-specific")
    message = str(error.value)
    assert "--backbone classifier" in message and "classifier=model" in message
    with pytest.raises(FileNotFoundError) as error:
        load_explainer("resnet", "composite", "distilled")
    message = str(error.value)
    assert "explainer gate --model resnet --split composite --gate student" in message
    assert "Explainer.load(PATH)" in message
