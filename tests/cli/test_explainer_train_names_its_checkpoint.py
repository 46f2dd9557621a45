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
    """``--resume b.ckpt --epochs 1`` of a one-epoch run trains nothing and writes no checkpoint.

    It named ``--checkpoint`` whatever file was there, here one that does not exist (it named
    another run's ``OUT.ckpt`` when that file existed, which is now refused before training).
    """
    args = ["explainer", "train", "--model", "resnet", "--train-size", "4", "--val-size", "2"]
    args += ["--epochs", "1", "--width", "2", "--depth", "2", "--no-progress", "--threads", "1"]
    out, other = tmp_path / "a.pt", tmp_path / "b.pt"
    assert main([*args, "--out", str(other)]) == 0
    capsys.readouterr()
    fresh = ["--checkpoint", str(tmp_path / "new.ckpt")]
    assert main([*args, "--resume", f"{other}.ckpt", "--out", str(out), *fresh]) == 0
    text = capsys.readouterr().out
    assert f"its training checkpoint is {other}.ckpt (" in text


def test_a_checkpoint_file_of_another_run_is_not_replaced(tmp_path, capsys):
    """Training again into an ``--out`` whose ``OUT.ckpt`` exists replaced that checkpoint.

    An earlier run's epochs were lost after the new run's first epoch; the command is refused
    before anything is loaded, saying to ``--resume`` it or to give another ``--checkpoint``.
    A resume of that very file still continues there.
    """
    args = ["explainer", "train", "--model", "resnet", "--train-size", "4", "--val-size", "2"]
    args += ["--width", "2", "--depth", "2", "--no-progress", "--threads", "1"]
    out = tmp_path / "a.pt"
    checkpoint = tmp_path / "a.pt.ckpt"
    assert main([*args, "--epochs", "1", "--seed", "5", "--out", str(out)]) == 0
    before = checkpoint.read_bytes()
    capsys.readouterr()
    assert main([*args, "--epochs", "1", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"{checkpoint} already exists" in error
    assert f"add --resume {checkpoint} to continue" in error and "another --checkpoint" in error
    assert checkpoint.read_bytes() == before
    elsewhere = tmp_path / "other.ckpt"
    elsewhere.write_bytes(b"not mine")
    assert main([*args, "--epochs", "1", "--out", str(out), "--checkpoint", str(elsewhere)]) == 2
    assert "argument --checkpoint: " in capsys.readouterr().err
    assert elsewhere.read_bytes() == b"not mine"
    resume = ["--resume", str(checkpoint), "--seed", "5", "--out", str(out)]
    assert main([*args, "--epochs", "2", *resume]) == 0
    assert checkpoint.read_bytes() != before


def test_a_resume_of_another_run_names_the_options_that_differ(tmp_path, capsys):
    """The refusal named ``fit``'s arguments (``train_loader: {'batch_size': 32, ...}``).

    Each difference is named by the command's option now, a loader's settings split into
    them; the library's error still names ``fit``'s arguments.
    """
    args = ["explainer", "train", "--model", "resnet", "--val-size", "2", "--no-progress"]
    args += ["--width", "2", "--depth", "2", "--threads", "1"]
    first = tmp_path / "a.pt"
    assert main([*args, "--train-size", "4", "--epochs", "1", "--out", str(first)]) == 0
    capsys.readouterr()
    again = ["--epochs", "2", "--resume", f"{first}.ckpt", "--out", str(tmp_path / "b.pt")]
    other = ["--train-size", "6", "--batch-size", "2", "--patience", "3", "--tv-weight", "2"]
    assert main([*args, *other, *again]) == 2
    error = capsys.readouterr().err
    assert "was trained with other options (--patience: 2 there, 3 now;" in error
    assert "--batch-size: 32 there, 2 now" in error and error.count("--batch-size:") == 1
    assert "training images: 4 there, 6 now (--split, --train-size, --two-object-fraction)" in error
    assert "other training images" not in error and "train_loader" not in error
    assert "--tv-weight: 1.0 there, 2.0 now" not in error  # the settings are checked first
    assert main([*args, "--train-size", "4", "--tv-weight", "2", "--lr", "0.1", *again]) == 2
    error = capsys.readouterr().err
    assert "(--lr: 0.01 there, 0.1 now; --tv-weight: 1.0 there, 2.0 now)" in error


def test_other_training_images_are_named_by_their_options_not_by_digests():
    """A resume whose images differ in count and content named the content by fit's name.

    ``training images: 16 there, 20 now (...)`` came with ``train_data: '91fa75d3...' there,
    'e44157dc...' now``, two SHA-256 digests of 64 digits; images that differ only in content
    are ``other training images``.
    """
    from pathlib import Path

    from ctc_plugin.commands.explainer import resume_mismatch
    from ctc_plugin.explainer.checkpoints import ResumeMismatchError

    loader = {"batch_size": 8, "length": 16, "sampler": "RandomSampler", "drop_last": False}
    error = ResumeMismatchError("other settings")
    error.differences = (
        ("train_loader", loader, {**loader, "length": 20}),
        ("train_data", "a" * 64, "b" * 64),
    )
    message = resume_mismatch(error, Path("a.ckpt"))
    assert "training images: 16 there, 20 now (--split, --train-size" in message
    assert "train_data" not in message and "a" * 64 not in message
    error.differences = (("val_data", "a" * 64, "b" * 64),)
    message = resume_mismatch(error, Path("a.ckpt"))
    assert "(other validation images (--split, --val-size))" in message


def test_a_resume_into_another_architecture_names_the_options_that_build_it(tmp_path, capsys):
    """It said to 'resume with an explainer built as the one that wrote it', fit's words: the
    command builds the explainer from --backbone, --width and --depth."""
    args = ["explainer", "train", "--model", "resnet", "--train-size", "4", "--val-size", "2"]
    args += ["--depth", "2", "--no-progress", "--threads", "1"]
    first = tmp_path / "a.pt"
    assert main([*args, "--width", "2", "--epochs", "1", "--out", str(first)]) == 0
    capsys.readouterr()
    again = ["--epochs", "2", "--resume", f"{first}.ckpt", "--out", str(tmp_path / "b.pt")]
    assert main([*args, "--width", "4", *again]) == 2
    error = capsys.readouterr().err
    assert "was trained with other options (the explainer's layers (--backbone, --width," in error
    assert "tensors differ in name or shape)" in error and "built as" not in error
