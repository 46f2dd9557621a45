"""Explainer.fit: frozen classifier, loaders, presets, determinism, early stopping, resume."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ctc_plugin.explainer import losses
from ctc_plugin.explainer.checkpoints import load_checkpoint
from ctc_plugin.explainer.presets import PRESETS, ExplainerHyperparameters, get_preset
from ctc_plugin.explainer.training import objective

from .helpers import NUM_CLASSES, data, dict_loader, tiny_classifier, tiny_explainer, tuple_loader

FAST_HP = ExplainerHyperparameters(lr=1e-2)
FAST = {"config": FAST_HP, "show_progress": False}


def test_gradients_never_reach_the_classifier_and_its_state_is_restored():
    clf = tiny_classifier()
    clf.train()
    clf[0].bias.requires_grad_(False)  # a mixed set of flags must come back as it was
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    modes_seen = []
    clf.register_forward_hook(lambda m, i, o: modes_seen.append(m.training))
    tiny_explainer().fit(clf, tuple_loader(), epochs=2, **FAST)
    assert modes_seen and not any(modes_seen)  # eval mode during training
    assert clf.training  # restored
    assert all(p.grad is None for p in clf.parameters())
    assert [p.requires_grad for p in clf.parameters()] == [True, False] + [True] * 4
    for key, value in clf.state_dict().items():  # BatchNorm statistics untouched too
        torch.testing.assert_close(value, before[key])


def test_the_explainer_learns():
    explainer = tiny_explainer()
    before = {k: v.clone() for k, v in explainer.state_dict().items()}
    result = explainer.fit(tiny_classifier(), tuple_loader(), epochs=2, **FAST)
    assert result.steps == 6 and explainer.is_trained
    assert explainer.trained_image_size == (16, 16)
    assert any(not torch.equal(v, before[k]) for k, v in explainer.state_dict().items())
    assert set(result.history[0]) >= {"classification", "entropy", "tv", "area", "loss"}


def test_failed_fit_restores_the_classifier():
    clf = tiny_classifier(num_classes=4)
    clf.train()
    with pytest.raises(ValueError, match="class-count mismatch"):
        tiny_explainer().fit(clf, tuple_loader(), **FAST)
    assert clf.training and all(p.requires_grad for p in clf.parameters())


def test_dict_and_tuple_loaders_train_identically():
    a, b = tiny_explainer(), tiny_explainer()
    a.fit(tiny_classifier(), tuple_loader(shuffle=False), epochs=1, **FAST)
    b.fit(tiny_classifier(), dict_loader(shuffle=False), epochs=1, **FAST)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key])


def test_bad_batches_and_labels_are_clear_errors():
    with pytest.raises(ValueError, match="'image' and 'label'"):
        tiny_explainer().fit(tiny_classifier(), [{"img": torch.zeros(1)}], **FAST)
    images, _ = data(4)
    with pytest.raises(ValueError, match="class indices"):
        tiny_explainer().fit(tiny_classifier(), [(images, torch.tensor([0, 1, 2, 3]))], **FAST)


def test_same_seed_same_result():
    results = []
    for _ in range(2):
        explainer = tiny_explainer(seed=3)
        explainer.fit(tiny_classifier(), tuple_loader(), epochs=2, seed=7, **FAST)
        results.append(explainer.state_dict())
    for key, value in results[0].items():
        assert torch.equal(value, results[1][key])


def test_resume_equals_an_uninterrupted_run(tmp_path):
    full = tiny_explainer()
    full.fit(tiny_classifier(), tuple_loader(), epochs=3, seed=1, patience=5, **FAST)
    part = tiny_explainer()
    ckpt = tmp_path / "run.ckpt"
    part.fit(
        tiny_classifier(), tuple_loader(), epochs=1, seed=1, patience=5, checkpoint=ckpt, **FAST
    )
    assert load_checkpoint(ckpt)["epoch"] == 1
    resumed = tiny_explainer(seed=99)  # different init: everything must come from the checkpoint
    result = resumed.fit(
        tiny_classifier(),
        tuple_loader(),
        epochs=3,
        patience=5,
        resume=ckpt,
        checkpoint=ckpt,
        **FAST,
    )
    assert len(result.history) == 3 and result.steps == 9
    for key, value in full.state_dict().items():
        torch.testing.assert_close(value, resumed.state_dict()[key])


def test_resume_with_other_settings_is_refused(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    tiny_explainer().fit(tiny_classifier(), tuple_loader(), epochs=1, checkpoint=ckpt, **FAST)
    with pytest.raises(ValueError, match="tv_weight"):
        tiny_explainer().fit(
            tiny_classifier(),
            tuple_loader(),
            config=dataclasses.replace(FAST_HP, tv_weight=5.0),
            resume=ckpt,
            show_progress=False,
        )
    threads = torch.get_num_threads()
    explainer = tiny_explainer()
    before = {k: v.clone() for k, v in explainer.state_dict().items()}
    try:
        torch.set_num_threads(threads + 1)
        with pytest.raises(ValueError, match=f"trained on {threads} CPU threads, this run has"):
            explainer.fit(tiny_classifier(), tuple_loader(), resume=ckpt, **FAST)
    finally:
        torch.set_num_threads(threads)
    for key, value in explainer.state_dict().items():  # the refused call changed nothing
        assert torch.equal(value, before[key]), key
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read"):
        tiny_explainer().fit(
            tiny_classifier(), tuple_loader(), resume=tmp_path / "junk.ckpt", **FAST
        )


def test_early_stopping_keeps_the_best_epoch():
    first = tiny_explainer()
    first.fit(tiny_classifier(), tuple_loader(), epochs=1, seed=2, **FAST)
    stopped = tiny_explainer()
    result = stopped.fit(
        tiny_classifier(), tuple_loader(), tuple_loader(seed=5), epochs=10, seed=2,
        patience=1, min_delta=1e9, **FAST,
    )  # fmt: skip
    assert result.stopped_early and len(result.history) == 2 and result.best_epoch == 1
    assert "val_loss" in result.history[0]
    for key, value in first.state_dict().items():
        if key != "trained_steps":
            torch.testing.assert_close(value, stopped.state_dict()[key])
    assert result.steps == 6  # both epochs' steps are counted


def test_multilabel_targets_use_binary_cross_entropy():
    explainer, clf = tiny_explainer(), tiny_classifier().eval()
    images, labels = data(4, multilabel=True)
    _, terms = objective(explainer, clf, images, labels, True, get_preset("default"))
    m, _ = losses.target_masks(explainer(images), labels)
    expected = F.binary_cross_entropy_with_logits(clf(m.unsqueeze(1) * images), labels)
    torch.testing.assert_close(terms["classification"], expected)
    result = explainer.fit(clf, tuple_loader(multilabel=True), epochs=1, **FAST)
    assert result.steps == 3


def test_presets_by_name_and_overrides():
    assert get_preset("ResNet50_VOC") == PRESETS["resnet50-voc"]
    assert get_preset("resnet50-coco").tv_weight == 0.05
    assert get_preset("default").as_dict() == {
        "lr": 1e-5, "entropy_weight": 1.0, "tv_weight": 1.0, "area_weight": 1.0,
        "target_area_weight": 0.1, "nontarget_area_weight": 0.3, "a_min": 0.05, "a_max": 0.3,
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown Explainer preset"):
        get_preset("vgg19-imagenet")
    config = dataclasses.replace(get_preset("vgg16-coco"), a_max=0.5)
    result = tiny_explainer().fit(tiny_classifier(), tuple_loader(), None, config, epochs=1)
    assert result.hyperparameters == PRESETS["vgg16-coco"].updated(a_max=0.5)
    with pytest.raises(ValueError, match="a_min <= a_max"):
        dataclasses.replace(FAST_HP, a_min=0.6)


def test_progress_bar_shows_the_loss_terms(capsys):
    tiny_explainer().fit(tiny_classifier(), tuple_loader(), config=FAST_HP, epochs=1)
    err = capsys.readouterr().err
    for name in ("cls=", "ent=", "tv=", "area=", "loss="):
        assert name in err
    assert NUM_CLASSES == 3
