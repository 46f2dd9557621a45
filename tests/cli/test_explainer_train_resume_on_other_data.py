"""``explainer train --resume`` on other training images of the same number is refused.

``--train-size 4 --two-object-fraction 0.5`` and ``--train-size 3 --two-object-fraction 1``
both train on six images, in batches of the same size: the resume was accepted, and the file
stored the second command, which does not give its weights (its first epoch saw other images).
"""

from ctc_plugin.cli import main

TRAIN = ["explainer", "train", "--model", "resnet", "--val-size", "2", "--batch-size", "4"]
TRAIN += ["--width", "2", "--depth", "2", "--threads", "1", "--no-progress"]


def test_a_resume_on_other_images_of_the_same_number_is_refused(tmp_path, capsys):
    first = tmp_path / "first.pt"
    four = ["--train-size", "4", "--two-object-fraction", "0.5"]
    assert main([*TRAIN, *four, "--epochs", "1", "--out", str(first)]) == 0
    capsys.readouterr()
    out = tmp_path / "resumed.pt"
    three = ["--train-size", "3", "--two-object-fraction", "1"]
    resume = ["--epochs", "2", "--resume", f"{first}.ckpt", "--out", str(out)]
    assert main([*TRAIN, *three, *resume]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        "\n" not in error
        and "other training images (--split, --train-size, --two-object-fraction)" in error
    )
    assert "--train-size" in error and "--two-object-fraction" in error
    assert not out.exists()
    assert main([*TRAIN, *four, *resume]) == 0  # the same data resumes
