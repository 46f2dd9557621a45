"""``explainer train --model vgg --resume`` of a resnet run's checkpoint is refused.

Before, resnet's explainer was continued and written labelled vgg.
"""

from ctc_plugin.cli import main

TINY = ["--train-size", "4", "--val-size", "2", "--width", "2", "--depth", "2"]
TINY += ["--no-progress", "--threads", "1"]


def test_resume_of_another_models_checkpoint_is_refused(tmp_path, capsys):
    first = tmp_path / "resnet.pt"
    train = ["explainer", "train", *TINY]
    assert main([*train, "--model", "resnet", "--epochs", "1", "--out", str(first)]) == 0
    capsys.readouterr()
    out = tmp_path / "vgg.pt"
    resume = ["--resume", f"{first}.ckpt", "--out", str(out)]
    assert main([*train, "--model", "vgg", "--epochs", "2", *resume]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("ctc-plugin explainer train: error: ")
    assert "trained against another classifier" in error
    assert not out.exists()
