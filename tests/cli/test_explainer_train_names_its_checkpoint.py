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
