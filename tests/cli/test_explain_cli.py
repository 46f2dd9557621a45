import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ctc_plugin.cli import main
from ctc_plugin.datasets import ShapesDataset, sample_path


def tiny_model() -> nn.Module:
    """A small classifier for the ``module:callable`` form of ``--model``."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def exp_model() -> nn.Module:
    """A model with an operation CTC has no rule for (the exponential of the signal)."""

    class Exponential(nn.Module):
        def forward(self, x):
            return torch.exp(x).mean((2, 3))

    return Exponential()


def read_png(path) -> Image.Image:
    image = Image.open(path)
    image.verify()  # raises on a truncated or corrupt file
    return Image.open(path)


def test_demo_runs_end_to_end_and_writes_a_valid_png(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--out", str(out)]) == 0
    figure = read_png(out)
    assert figure.format == "PNG" and figure.size[0] > figure.size[1]
    text = capsys.readouterr().out
    assert "predicted 3 (star)" in text and "in evidence" in text
    ranks = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
    scores = [float(row[2]) for row in ranks]
    assert scores == sorted(scores, reverse=True) and len(scores) > 5


def test_demo_composite_resizes_the_ground_truth_with_the_image(tmp_path, capsys):
    out = tmp_path / "demo.png"
    args = [
        "demo",
        "--split",
        "composite",
        "--resize",
        "64",
        "--segmenter",
        "grid",
        "--top",
        "25",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    # --resize without --crop: the zoo model's 96 x 96 crop shrinks to fit.
    assert "resnet-composite" in text and "96x96 -> 64x64" in text
    rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 25 and all(row[4].endswith("%") for row in rows)
    assert read_png(out).format == "PNG"


def test_explain_defaults_to_the_bundled_sample(tmp_path, capsys):
    out = tmp_path / "explain.png"
    args = ["explain", "--segmenter", "grid", "--segments", "16", "--top", "16", "--out", str(out)]
    assert main(args) == 0
    assert read_png(out).format == "PNG"
    text = capsys.readouterr().out
    assert str(sample_path("shapes")) in text
    # 4 x 4 grid cells, each listed once.
    rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert sorted(int(row[1]) for row in rows) == list(range(16))


def test_explain_resizes_an_image_file_and_accepts_a_class_name(tmp_path, capsys):
    item = ShapesDataset("shapes", size=1, seed=21)[0]
    array = (item["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    path = tmp_path / "big.png"
    Image.fromarray(array).resize((150, 150)).save(path)
    out = tmp_path / "fig.png"
    args = [
        "explain",
        str(path),
        "--model",
        "vgg",
        "--target",
        "cross",
        "--bias-sharing",
        "proportional",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "150x150 -> 96x96" in text and "explaining target 4 (cross)" in text
    assert read_png(out).format == "PNG"


def test_explain_with_a_module_callable_model(tmp_path, capsys):
    image = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(image)
    weights = tmp_path / "tiny.pt"
    torch.save(tiny_model().state_dict(), weights)
    out = tmp_path / "fig.png"
    args = [
        "explain",
        str(image),
        "--model",
        "tests.cli.test_explain_cli:tiny_model",
        "--weights",
        str(weights),
        "--resize",
        "40",
        "--segmenter",
        "grid",
        "--target",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "explaining target 2" in capsys.readouterr().out
    assert read_png(out).format == "PNG"


def test_explain_with_torchvision_weights_from_a_local_file(tmp_path, capsys):
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    out = tmp_path / "fig.png"
    args = [
        "explain",
        "--model",
        "resnet18",
        "--weights",
        str(weights),
        "--resize",
        "64",
        "--segmenter",
        "grid",
        "--segments",
        "9",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    # torchvision's own preprocessing (resize 256, crop 224) with the crop shrunk to fit 64.
    assert "96x96 -> 64x64" in text and "mean (0.485, 0.456, 0.406)" in text
    assert "explaining target" in text and "(" in text.split("explaining target")[1]
    assert read_png(out).format == "PNG"


def test_explain_with_a_fine_tuned_torchvision_head(tmp_path, capsys):
    import torchvision

    weights = tmp_path / "tuned.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), weights)
    args = ["explain", "--model", "resnet18", "--weights", str(weights), "--resize", "64"]
    args += ["--segmenter", "grid", "--segments", "4", "--target", "7", "--out"]
    assert main([*args, str(tmp_path / "fig.png")]) == 0
    text = capsys.readouterr().out
    assert "explaining target 7" in text and "tench" not in text  # numbered, not ImageNet's
    assert main([*args[:-3], "--target", "10", "--out", str(tmp_path / "other.png")]) == 2
    assert "10" in capsys.readouterr().err


def _error(capsys, args) -> str:
    assert main(args) == 2
    return capsys.readouterr().err


@pytest.fixture
def images(tmp_path):
    paths = {"corrupt": tmp_path / "corrupt.png"}
    paths["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return paths


def test_error_messages_name_what_to_fix(tmp_path, capsys, images):
    out = ["--out", str(tmp_path / "x.png")]
    assert "argument IMAGE: file not found" in _error(
        capsys, ["explain", str(tmp_path / "no.png"), *out]
    )
    assert "cannot read" in _error(capsys, ["explain", str(images["corrupt"]), *out])
    assert "--model: unknown model 'alexnet2'" in _error(
        capsys, ["explain", "--model", "alexnet2", *out]
    )
    assert "--weights PATH" in _error(capsys, ["explain", "--model", "resnet18", *out])
    missing = str(tmp_path / "missing.pt")
    assert "--weights: file not found" in _error(
        capsys, ["explain", "--model", "vgg", "--weights", missing, *out]
    )
    assert "--sam-checkpoint PATH" in _error(capsys, ["explain", "--segmenter", "sam", *out])
    assert "--sam-checkpoint: file not found" in _error(
        capsys, ["explain", "--segmenter", "sam", "--sam-checkpoint", missing, *out]
    )
    assert "--target 'dog'" in _error(capsys, ["explain", "--target", "dog", *out])
    assert "--target 9 out of range" in _error(capsys, ["explain", "--target", "9", *out])
    assert "cannot import" in _error(capsys, ["explain", "--model", "nosuchmodule:f", *out])
    unsupported = [
        "explain",
        "--model",
        "tests.cli.test_explain_cli:exp_model",
        "--segmenter",
        "grid",
        "--target",
        "0",
        *out,
    ]
    assert "CTC cannot propagate" in _error(capsys, unsupported)
    assert not (tmp_path / "x.png").exists()


def test_zoo_model_with_missing_shipped_weights_names_the_fix(tmp_path, capsys, monkeypatch):
    from ctc_plugin import weights

    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)
    err = _error(capsys, ["explain", "--model", "densenet", "--out", str(tmp_path / "x.png")])
    assert "--model densenet" in err and "zoo train densenet" in err


@pytest.mark.slow
def test_explain_with_a_sam_checkpoint(tmp_path, capsys):
    from ctc_plugin.adapters.sam import build_tiny_sam

    checkpoint = tmp_path / "tiny_sam.pth"
    torch.save(build_tiny_sam().state_dict(), checkpoint)
    out = tmp_path / "sam.png"
    args = [
        "explain",
        "--segmenter",
        "sam",
        "--sam-checkpoint",
        str(checkpoint),
        "--sam-model-type",
        "tiny",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "figure written" in capsys.readouterr().out
    assert read_png(out).format == "PNG"


def test_a_missing_weights_file_says_what_to_give(tmp_path, capsys):
    """A newcomer copying the tutorial's command without the weight file is told what the file
    is and how to make one (nothing is downloaded), not only that it is missing."""
    missing = str(tmp_path / "resnet18-f37072fd.pth")
    for command in (["explain", str(sample_path())], ["explain-dataset", str(tmp_path)]):
        error = _error(
            capsys,
            [*command, "--model", "resnet18", "--weights", missing, "--out", str(tmp_path / "o")],
        )
        assert "--weights: file not found" in error, error
        assert "torch.save(model.state_dict(), PATH)" in error and "nothing is downloaded" in error
        assert error.count("\n") <= 3, error  # usage lines and one error line
