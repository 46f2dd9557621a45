"""The Explainer takes a backbone module, fit takes ExplainerHyperparameters: the new surface."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from torch import nn

from ctc_plugin.explainer import training
from ctc_plugin.explainer.backbones import BACKBONES, build_backbone, recipe_of
from ctc_plugin.explainer.network import FILE_FORMAT, Explainer
from ctc_plugin.explainer.presets import get_preset
from ctc_plugin.explainer.training import fit_explainer
from tests.strategies import explainer_hyperparameters

from .helpers import NUM_CLASSES, SIZE, classifier_with_head, tiny_classifier, tuple_loader

#: Small settings of each named backbone the tests build (the torchvision ones are large).
SMALL = {
    "unet-small": {"width": 2, "depth": 2},
    "classifier": {"width": 2, "head": "head"},
    "classifier-gated": {"width": 2, "head": "head", "mask_scale": 0.5},
    "student-gated": {"width": 2, "student_width": 2, "mask_scale": 0.5},
    "student-unet": {"width": 2},
}


def build(name: str) -> tuple[nn.Module, nn.Module | None]:
    options = dict(SMALL[name])
    classifier = classifier_with_head() if "head" in options else None
    if classifier is not None:
        options["classifier"] = classifier
    torch.manual_seed(0)
    return build_backbone(name, NUM_CLASSES, **options), classifier


@pytest.mark.parametrize("name", sorted(SMALL))
def test_each_named_backbone_round_trips_through_a_file(tmp_path, name):
    backbone, classifier = build(name)
    explainer = Explainer(backbone, NUM_CLASSES, input_scale=0.5).eval()
    assert explainer.backbone_name == name and explainer.backbone is backbone
    config = explainer.config()
    assert config["backbone"] == name and config["input_scale"] == 0.5
    for key, value in SMALL[name].items():
        assert config[key] == value
    path = explainer.save(tmp_path / f"{name}.pt")
    loaded = Explainer.load(path, classifier=classifier_with_head(seed=5) if classifier else None)
    assert loaded.config() == config
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), explainer(x))


def test_every_registry_name_has_a_documented_builder():
    assert set(SMALL) < set(BACKBONES)
    for builder in BACKBONES.values():
        assert builder.__doc__ and "num_classes" in builder.__doc__


def test_old_constructor_calls_say_how_to_build_the_backbone():
    new_form = r"is called differently now: it takes the backbone module first"
    with pytest.raises(TypeError, match=rf"{new_form}.*build_backbone\('unet-small', 6\), 6\)"):
        Explainer(6)
    with pytest.raises(
        TypeError,
        match=r"build_backbone\('classifier', 6, classifier=classifier, head='head'\), 6\)",
    ):
        Explainer(6, backbone="classifier", classifier=classifier_with_head(), head="head")
    # the old call's settings go along: pasted, the advice builds the same network
    with pytest.raises(
        TypeError,
        match=r"Explainer\(build_backbone\('unet-small', 6, in_channels=1, width=4, depth=4\), 6, "
        r"in_channels=1\)",
    ):
        Explainer(6, width=4, depth=4, in_channels=1)
    with pytest.raises(  # a setting renamed since, and the explainer's own input_scale
        TypeError, match=r"build_backbone\('unet-small', 6, weights='w.pt'\), 6, input_scale=0.5\)"
    ):
        Explainer(6, backbone_weights="w.pt", input_scale=0.5)
    with pytest.raises(TypeError, match=r"build_backbone\('unet-small', 6\), 6\)"):
        Explainer(num_classes=6)
    with pytest.raises(TypeError, match=r"build_backbone\('student-unet', 6\)"):
        Explainer("student-unet", 6)
    with pytest.raises(TypeError, match=r"module first: Explainer\(backbone, 6\)$"):
        Explainer(6, backbone=nn.Conv2d(3, 6, 1))
    with pytest.raises(TypeError, match="backbone must be an nn.Module, got list"):
        Explainer([nn.Conv2d(3, 6, 1)], 6)
    backbone = build_backbone("unet-small", 6)
    for old in ({"width": 4}, {"depth": 4}, {"mask_scale": 0.5}, {"backbone_weights": "x.pt"}):
        with pytest.raises(TypeError, match=f"no longer takes {next(iter(old))}=.*build_backbone"):
            Explainer(backbone, 6, **old)


def test_old_attributes_say_where_they_went():
    explainer = Explainer(build_backbone("unet-small", 6, width=4, depth=3), 6)
    for name, value in (("width", 4), ("depth", 3)):
        with pytest.raises(AttributeError, match=rf"config\(\)\.get\('{name}'\)"):
            getattr(explainer, name)
        assert not hasattr(explainer, name)  # hasattr still answers
        assert explainer.config().get(name) == value
    assert isinstance(explainer.backbone, nn.Module)  # other lookups unchanged


def test_a_backbone_built_for_other_classes_or_channels_is_refused():
    with pytest.raises(ValueError, match="built for 6 classes, the explainer has 5"):
        Explainer(build_backbone("unet-small", 6), 5)
    with pytest.raises(ValueError, match="built for 1-channel images"):
        Explainer(build_backbone("unet-small", 6, in_channels=1), 6, in_channels=3)
    one_channel = Explainer(build_backbone("unet-small", 6, in_channels=1, width=2), 6)
    assert one_channel.in_channels == 1
    assert one_channel(torch.rand(1, 1, 16, 16)).shape == (1, 6, 16, 16)


def test_a_custom_module_has_no_recipe_but_works():
    custom = nn.Conv2d(3, 4, 1)
    explainer = Explainer(custom, 4)
    assert explainer.backbone_name is None and recipe_of(custom) is None
    assert explainer(torch.rand(1, 3, 8, 8)).shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="no saveable config"):
        explainer.config()


def _old_file(tmp_path, config: dict, state: dict) -> str:
    path = tmp_path / "old.pt"
    torch.save({"format": FILE_FORMAT, "config": config, "state_dict": state, "metadata": {}}, path)
    return path


def test_files_of_the_first_format_load_with_their_no_op_settings_dropped(tmp_path):
    """Before the registry every file stored width and depth, used by its backbone or not."""
    torch.manual_seed(0)
    explainer = Explainer(build_backbone("student-unet", NUM_CLASSES, width=2), NUM_CLASSES)
    old = {**explainer.config(), "depth": 3}  # as the first format wrote it
    loaded = Explainer.load(_old_file(tmp_path, old, explainer.state_dict()))
    assert loaded.config() == explainer.config()
    with pytest.raises(ValueError, match="cannot build"):
        Explainer.load(_old_file(tmp_path, {**old, "student_width": 8}, explainer.state_dict()))


@settings(max_examples=10, deadline=None)
@given(config=explainer_hyperparameters())
def test_fit_uses_every_field_of_its_config(config):
    """Adam gets ``config.lr``; the loss is the terms weighted by the config's fields."""
    seen: dict[str, object] = {}
    real_objective = training.objective

    def objective(explainer, classifier, images, targets, multilabel, hp, baseline=0.0):
        loss, terms = real_objective(explainer, classifier, images, targets, multilabel, hp)
        seen["hp"] = hp
        expected = (
            terms["classification"]
            + config.entropy_weight * terms["entropy"]
            + config.tv_weight * terms["tv"]
            + config.area_weight * terms["area"]
            + config.target_area_weight * terms["target_area"]
            + config.nontarget_area_weight * terms["nontarget_area"]
        )
        torch.testing.assert_close(loss, expected)
        return loss, terms

    class Adam(torch.optim.Adam):
        def __init__(self, params, lr):
            seen["lr"] = lr
            super().__init__(params, lr=lr)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "objective", objective)
        patch.setattr(torch.optim, "Adam", Adam)
        torch.manual_seed(0)
        explainer = Explainer(build_backbone("unet-small", NUM_CLASSES, width=2), NUM_CLASSES)
        result = fit_explainer(
            explainer, tiny_classifier(), tuple_loader(), config=config, epochs=1,
            max_steps_per_epoch=1, show_progress=False,
        )  # fmt: skip
    assert seen["hp"] is config and seen["lr"] == config.lr
    assert result.hyperparameters is config


def test_old_fit_keywords_say_where_they_went():
    explainer = Explainer(build_backbone("unet-small", NUM_CLASSES, width=2), NUM_CLASSES)
    before = {k: v.clone() for k, v in explainer.state_dict().items()}
    clf, loader = tiny_classifier(), tuple_loader()
    with pytest.raises(TypeError, match=r"config=ExplainerHyperparameters\(lr=0\.01, tv_weight=2"):
        explainer.fit(clf, loader, lr=1e-2, tv_weight=2.0, show_progress=False)
    with pytest.raises(TypeError, match=r"config=get_preset\(name\)"):
        fit_explainer(explainer, clf, loader, preset="vgg16-voc", show_progress=False)
    with pytest.raises(TypeError, match=r"config=get_preset\('vgg16-voc'\)"):
        fit_explainer(explainer, clf, loader, None, "vgg16-voc", show_progress=False)
    with pytest.raises(TypeError, match=r"progress=.*show_progress= now"):
        explainer.fit(clf, loader, epochs=1, progress=False)
    for key, value in explainer.state_dict().items():  # refused calls trained nothing
        assert torch.equal(value, before[key])
    assert dataclasses.replace(get_preset("vgg16-voc"), lr=1.0).tv_weight == 1.0
