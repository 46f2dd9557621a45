"""``explainer train --two-object-fraction`` that rounds to no image is refused, not ignored."""

from ctc_plugin.cli import main

TRAIN = ["explainer", "train", "--model", "resnet", "--train-size", "8", "--val-size", "2"]
TRAIN += ["--batch-size", "4", "--width", "2", "--depth", "2", "--threads", "1", "--no-progress"]


def test_a_fraction_of_no_image_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "e.pt"
    assert main([*TRAIN, "--two-object-fraction", "0.01", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "--two-object-fraction 0.01 of --train-size 8 is no two-object image" in error
    assert "\n" not in error and not out.exists()


def test_a_fraction_of_one_image_trains(tmp_path, capsys):
    out = tmp_path / "e.pt"
    argv = [*TRAIN, "--two-object-fraction", "0.125", "--epochs", "1", "--out", str(out)]
    assert main(argv) == 0 and out.is_file()
