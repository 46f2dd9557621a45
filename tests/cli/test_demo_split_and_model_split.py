"""``demo --split`` and a zoo ``--model`` trained on the other split: refused, or the model's split.

The demo draws the sample's ground-truth evidence and says how much of each segment lies in
it: a composite model on the shapes sample (or the reverse) gives a table about classes and
evidence that do not belong together.
"""

import pytest

from ctc_plugin.cli import main


@pytest.mark.parametrize(
    ("split", "model"), [("shapes", "resnet-composite"), ("composite", "resnet-shapes")]
)
def test_split_contradicting_the_models_split_is_refused(tmp_path, capsys, split, model):
    out = tmp_path / "demo.png"
    assert main(["demo", "--split", split, "--model", model, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("ctc-plugin demo: error: --model")
    assert f"--split {split}" in error
    assert not out.exists()


def test_without_split_the_demo_takes_the_models_split(tmp_path, capsys):
    out = tmp_path / "demo.png"
    args = ["demo", "--model", "resnet-composite", "--segmenter", "grid", "--segments", "4"]
    assert main([*args, "--no-progress", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "samples/composite.png" in text and "predicted 0 (inside)" in text


def test_a_torchvision_model_explains_the_composite_sample(tmp_path, capsys):
    """Only a zoo family gets its composite weights; another model explains the sample as it is."""
    import torch
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=4).state_dict(), weights)
    out = tmp_path / "demo.png"
    args = ["demo", "--split", "composite", "--model", "resnet18", "--weights", str(weights)]
    args += ["--resize", "64", "--segmenter", "grid", "--segments", "4", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    assert "samples/composite.png" in capsys.readouterr().out and out.exists()
