"""``explainer train --resume``: another ``--input-scale``, or fewer ``--epochs``, is refused.

Before, both were accepted: the file recorded the new scale beside weights trained at the old
one, and ``--epochs 1`` of a two-epoch checkpoint wrote a two-epoch file whose stored command
says ``--epochs 1``.
"""

import pytest

from ctc_plugin.cli import main

TRAIN = ["explainer", "train", "--model", "resnet", "--train-size", "4", "--val-size", "2"]
TRAIN += ["--batch-size", "4", "--width", "2", "--depth", "2", "--threads", "1", "--no-progress"]


@pytest.fixture
def checkpoint(tmp_path, capsys):
    """The checkpoint of a two-epoch run."""
    first = tmp_path / "first.pt"
    assert main([*TRAIN, "--epochs", "2", "--out", str(first)]) == 0
    capsys.readouterr()
    return f"{first}.ckpt"


def _refused(capsys, args: list[str], out) -> str:
    assert main([*args, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("ctc-plugin explainer train: error: ")
    assert not out.exists()
    return error


def test_resume_with_another_input_scale_is_refused(tmp_path, capsys, checkpoint):
    args = [*TRAIN, "--epochs", "3", "--resume", checkpoint, "--input-scale", "0.5"]
    error = _refused(capsys, args, tmp_path / "rescaled.pt")
    assert "trained with other options" in error and "--input-scale: 1.0 there, 0.5 now" in error


def test_resume_with_fewer_epochs_than_the_checkpoint_holds_is_refused(
    tmp_path, capsys, checkpoint
):
    error = _refused(capsys, [*TRAIN, "--epochs", "1", "--resume", checkpoint], tmp_path / "e.pt")
    assert "already holds 2 epochs" in error and "--epochs" in error


def test_resume_with_as_many_or_more_epochs_is_trained(tmp_path, capsys, checkpoint):
    for epochs in ("2", "3"):
        out = tmp_path / f"epochs-{epochs}.pt"
        assert main([*TRAIN, "--epochs", epochs, "--resume", checkpoint, "--out", str(out)]) == 0
        assert out.is_file()
        # the checkpoint it names exists: with as many epochs nothing was trained or written
        named = capsys.readouterr().out.split("its training checkpoint is ")[1].split(" (")[0]
        assert named == (checkpoint if epochs == "2" else f"{out}.ckpt")
