"""``ctc-plugin explainer train``."""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.cli import main
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.checkpoints import load_checkpoint
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.module_state import state_digest
from ctc_plugin.zoo import weights_path

SMALL = ["--train-size", "8", "--val-size", "4", "--batch-size", "4", "--width", "2"]
needs_zoo = pytest.mark.skipif(
    not weights_path("resnet", "shapes").is_file(), reason="zoo weights for resnet/shapes missing"
)


@needs_zoo
def test_train_writes_a_loadable_explainer_and_resumes(tmp_path, capsys):
    out = tmp_path / "e.pt"
    argv = ["explainer", "train", "--model", "resnet", "--no-progress", *SMALL, "--out", str(out)]
    assert main([*argv, "--epochs", "1", "--seed", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    explainer = Explainer.load(out)
    assert explainer.is_trained and explainer.num_classes == 6
    assert "--seed 3" in explainer.metadata["command"]
    assert explainer.metadata["threads"] == 1 and "--threads 1" in explainer.metadata["command"]
    # what bit-for-bit rebuilding needs besides the command: the torch release and CPU kernels
    assert explainer.metadata["torch"] == torch.__version__
    assert explainer.metadata["cpu"] == torch.backends.cpu.get_cpu_capability()
    ckpt = tmp_path / "e.pt.ckpt"
    assert load_checkpoint(ckpt)["epoch"] == 1
    assert main([*argv, "--epochs", "2", "--seed", "3", "--resume", str(ckpt)]) == 0
    assert len(Explainer.load(out).metadata["history"]) == 2
    again = tmp_path / "again.pt"
    assert main([*argv[:-1], str(again), "--epochs", "2", "--seed", "3"]) == 0
    for key, value in Explainer.load(out).state_dict().items():
        torch.testing.assert_close(value, Explainer.load(again).state_dict()[key])


def test_missing_classifier_weights_is_one_clean_line(tmp_path, capsys):
    argv = ["explainer", "train", "--model", "resnet", "--weights", str(tmp_path / "none.pt")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "none.pt" in err and "Traceback" not in err


def test_unknown_model_is_a_clean_error(capsys):
    assert main(["explainer", "train", "--model", "alexnet"]) == 2
    assert "alexnet" in capsys.readouterr().err


@needs_zoo
def test_two_object_images_and_depth_are_used_and_recorded(tmp_path):
    out = tmp_path / "e.pt"
    argv = ["explainer", "train", "--model", "resnet", "--no-progress", *SMALL, "--out", str(out)]
    assert main([*argv, "--epochs", "1", "--depth", "4", "--two-object-fraction", "0.5"]) == 0
    explainer = Explainer.load(out)
    assert explainer.config()["depth"] == 4 and explainer.metadata["two_object_images"] == 4
    command = explainer.metadata["command"]
    assert "--depth 4" in command and "--two-object-fraction 0.5" in command


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--split", "composite", "--two-object-fraction", "0.5"], "--split shapes"),
        (["--two-object-fraction", "-1"], "--two-object-fraction: must be at least 0"),
        (["--depth", "1"], "--depth"),
        (["--input-scale", "0"], "--input-scale"),
    ],
)
def test_bad_two_object_or_depth_options_are_clean_errors(options, message, capsys):
    assert main(["explainer", "train", "--model", "resnet", *SMALL, *options]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@needs_zoo
def test_classifier_backbone_is_trained_recorded_and_loadable(tmp_path):
    from ctc_plugin import zoo

    out = tmp_path / "cs.pt"
    argv = ["explainer", "train", "--model", "resnet", "--no-progress", *SMALL, "--out", str(out)]
    assert main([*argv, "--epochs", "1", "--backbone", "classifier"]) == 0
    classifier = zoo.load("resnet")
    explainer = Explainer.load(out, classifier=classifier)
    assert explainer.config()["backbone"] == "classifier" and explainer.config()["head"] == "head"
    assert "--backbone classifier" in explainer.metadata["command"]
    # the shipped classifier is untouched by training its copy
    for key, value in zoo.load("resnet").state_dict().items():
        torch.testing.assert_close(classifier.state_dict()[key], value)


@pytest.fixture(scope="module")
def default_path(tmp_path_factory):
    """A small default resnet explainer at half resolution, trained once for the gate tests."""
    path = tmp_path_factory.mktemp("default") / "default.pt"
    argv = ["explainer", "train", "--model", "resnet", "--no-progress", *SMALL, "--epochs", "1"]
    assert main([*argv, "--input-scale", "0.5", "--out", str(path)]) == 0
    return path


@needs_zoo
def test_gate_builds_a_class_specific_explainer_from_a_default_one(default_path, tmp_path, capsys):
    from ctc_plugin import zoo

    out = tmp_path / "gated.pt"
    gate = ["explainer", "gate", "--model", "resnet", "--mask-explainer", str(default_path)]
    assert main([*gate, "--sharpness", "20", "--out", str(out)]) == 0
    gated = Explainer.load(out, classifier=zoo.load("resnet"))
    default = Explainer.load(default_path)
    assert gated.backbone_name == "classifier-gated" and gated.is_trained
    # the masks are the default explainer's: it explains the classifier that one was trained for
    assert gated.trained_for == default.trained_for == state_digest(zoo.load("resnet"))
    assert gated.metadata["command"].endswith(
        "--sharpness 20.0 --threshold 0.3 --mask-offset 0.0 --gate classifier"
    )  # no --threads: nothing is trained, the count changes nothing
    assert "threads" not in gated.metadata
    # the gate only removes: every gated mask lies below the default explainer's mask
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert (gated.masks(x) <= default.masks(x) + 1e-5).all()
    untrained = tmp_path / "untrained.pt"
    Explainer(build_backbone("unet-small", 6), 6).save(untrained)
    assert main(["explainer", "gate", "--model", "resnet", "--mask-explainer", str(untrained)]) == 2
    err = capsys.readouterr().err
    assert "untrained" in err and "Traceback" not in err


@needs_zoo
def test_gate_with_a_student_distils_the_class_maps_and_needs_no_classifier(
    default_path, tmp_path, capsys
):
    out = tmp_path / "student.pt"
    gate = ["explainer", "gate", "--model", "resnet", "--mask-explainer", str(default_path)]
    student = ["--gate", "student", "--student-images", "64", "--student-epochs", "2"]
    assert main([*gate, *student, "--mask-offset", "1", "--no-progress", "--out", str(out)]) == 0
    assert "distillation loss" in capsys.readouterr().out
    gated = Explainer.load(out)  # the file holds the student, not the classifier
    default = Explainer.load(default_path)
    assert gated.backbone_name == "student-gated" and gated.config()["student_width"] == 8
    assert gated.metadata["command"].endswith(
        "--mask-offset 1.0 --gate student --student-width 8 --student-epochs 2 "
        "--student-images 64 --seed 0 --threads 1"
    )
    assert len(gated.metadata["distillation_loss"]) == 2
    # the mask offset shifts the copied U-Net's logits
    torch.testing.assert_close(gated.backbone.mask.head.bias, default.backbone.head.bias + 1.0)
    assert main([*gate, "--gate", "student", "--student-epochs", "0"]) == 2
    assert "--student-epochs" in capsys.readouterr().err
    assert main([*gate, "--student-width", "4", "--seed", "1"]) == 2  # the classifier gate
    err = capsys.readouterr().err
    assert "--student-width, --seed apply to --gate student and student-unet only" in err


@needs_zoo
def test_gate_student_unet_distils_class_maps_and_masks_into_one_network(
    default_path, tmp_path, capsys
):
    out = tmp_path / "student-unet.pt"
    gate = ["explainer", "gate", "--model", "resnet", "--mask-explainer", str(default_path)]
    student = ["--gate", "student-unet", "--student-images", "64", "--student-epochs", "2"]
    args = [*gate, *student, "--student-width", "4", "--mask-offset", "1", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    assert "distillation loss" in capsys.readouterr().out
    gated = Explainer.load(out)  # no classifier needed
    assert gated.backbone_name == "student-unet" and gated.config()["width"] == 4
    assert gated.is_trained and gated.trained_image_size == (96, 96)
    assert gated.metadata["command"].endswith(
        "--mask-offset 1.0 --gate student-unet --student-width 4 --student-epochs 2 "
        "--student-images 64 --seed 0 --threads 1"
    )
    assert len(gated.metadata["distillation_loss"]) == 2
    # the same command again gives the same network; the offset went to the mask head
    again = tmp_path / "again.pt"
    assert main([*args, "--mask-offset", "0", "--out", str(again)]) == 0
    unshifted = Explainer.load(again)
    for key, value in unshifted.state_dict().items():
        expected = value + 1.0 if key == "backbone.head.bias" else value
        torch.testing.assert_close(gated.state_dict()[key], expected, rtol=0, atol=1e-6)
    assert gated.metadata["threads"] == 1
    assert main([*gate, "--gate", "student-unet", "--student-width", "0"]) == 2
    assert "--student-width" in capsys.readouterr().err
    assert main([*gate, "--gate", "student-unet", "--student-images", "42"]) == 2
    err = capsys.readouterr().err  # 42 + 21 two-object images: one short of a batch
    assert "--student-images 42 gives 63 distillation images on split 'shapes'" in err
    assert "(64)" in err
    unreadable = tmp_path / "not-an-explainer.pt"
    unreadable.write_bytes(b"not a torch file")
    garbage = ["explainer", "gate", "--model", "resnet", "--mask-explainer", str(unreadable)]
    assert main([*garbage, "--gate", "student-unet", "--student-images", "42"]) == 2
    assert "--student-images 42" in capsys.readouterr().err  # checked before loading anything
    assert main([*gate, "--threads", "0"]) == 2
    assert "argument --threads: must be at least 1, got 0" in capsys.readouterr().err


@needs_zoo
def test_train_with_other_classifier_weights_records_them_in_the_command(tmp_path):
    out, weights = tmp_path / "e.pt", weights_path("resnet", "shapes")
    argv = ["explainer", "train", "--model", "resnet", "--weights", str(weights), *SMALL]
    assert main([*argv, "--epochs", "1", "--no-progress", "--out", str(out)]) == 0
    assert f"--weights {weights}" in Explainer.load(out).metadata["command"]


def test_the_summary_gives_the_losses_of_the_epoch_written_not_the_last():
    """It printed the best epoch's validation loss beside the last epoch's classification loss
    (0.2962 of epoch 3 where the written epoch 2 had 0.0764)."""
    from ctc_plugin.commands.explainer import trained_summary
    from ctc_plugin.explainer.training import FitResult

    history = [
        {"classification": 0.30, "val_loss": 0.50},
        {"classification": 0.0764, "val_loss": 0.4210},
        {"classification": 0.2962, "val_loss": 0.45},
    ]
    summary = trained_summary(FitResult(history, best_epoch=2, best_loss=0.4210))
    assert summary == (
        "best epoch 2 of 3 (the one written), val loss 0.4210, masked-classification loss 0.0764"
    )
