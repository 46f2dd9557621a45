"""``explainer train`` says where it wrote the explainer and the training checkpoint beside it."""

from ctc_plugin.cli import main


def test_train_prints_the_checkpoint_it_leaves(tmp_path, capsys):
    out = tmp_path / "my explainer.pt"
    args = ["explainer", "train", "--model", "resnet", "--train-size", "4", "--val-size", "2"]
    args += ["--epochs", "1", "--width", "2", "--depth", "2", "--no-progress", "--threads", "1"]
    assert main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    checkpoint = tmp_path / "my explainer.pt.ckpt"
    assert out.is_file() and checkpoint.is_file()
    assert f"wrote {out}" in text and str(checkpoint) in text


def test_a_resume_that_trains_nothing_names_its_checkpoint_not_another_runs(tmp_path, capsys):
    """The default ``--checkpoint`` may hold another run's checkpoint: not the one to name.

    ``--resume b.ckpt --epochs 1`` of a one-epoch run trains nothing and writes no checkpoint;
    it named ``OUT.ckpt`` whenever that file existed, here another run (seed 5) that the advice
    "--resume it with more --epochs" would have continued.
    """
    args = ["explainer", "train", "--model", "resnet", "--train-size", "4", "--val-size", "2"]
    args += ["--epochs", "1", "--width", "2", "--depth", "2", "--no-progress", "--threads", "1"]
    out, other = tmp_path / "a.pt", tmp_path / "b.pt"
    assert main([*args, "--seed", "5", "--out", str(out)]) == 0
    assert main([*args, "--out", str(other)]) == 0
    capsys.readouterr()
    assert main([*args, "--resume", f"{other}.ckpt", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"its training checkpoint is {other}.ckpt (" in text
