"""``explainer train --checkpoint`` naming the ``--out`` file is refused before training."""

from ctc_plugin.cli import main


def test_checkpoint_and_out_naming_one_file_is_refused(tmp_path, capsys):
    out = tmp_path / "explainer.pt"
    args = ["explainer", "train", "--model", "resnet", "--train-size", "4", "--val-size", "2"]
    args += ["--epochs", "1", "--width", "2", "--no-progress", "--out", str(out)]
    assert main([*args, "--checkpoint", str(tmp_path / "sub" / ".." / "explainer.pt")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("ctc-plugin explainer train: error: ")
    assert "--checkpoint" in error and "--out" in error
    assert not out.exists()


def test_resume_and_out_naming_one_file_is_refused(tmp_path, capsys):
    checkpoint = tmp_path / "run.ckpt"
    checkpoint.write_bytes(b"a checkpoint")  # never read: refused before
    args = ["explainer", "train", "--model", "resnet", "--no-progress"]
    assert main([*args, "--resume", str(checkpoint), "--out", str(checkpoint)]) == 2
    error = capsys.readouterr().err.strip()
    assert "--resume and --out" in error
    assert checkpoint.read_bytes() == b"a checkpoint"
