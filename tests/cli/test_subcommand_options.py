"""Subcommand options that users reach for: checked when parsed, and quiet where asked."""

from ctc_plugin.cli import main


def test_an_unknown_explainer_preset_is_an_argument_error_before_any_work(capsys):
    """It was found after the model loaded and the training images were drawn."""
    assert main(["explainer", "train", "--model", "resnet", "--preset", "defualt"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("ctc-plugin explainer train: error: argument --preset: ")
    assert "unknown preset 'defualt'; choose one of default," in last


def test_zoo_eval_takes_no_progress(capsys):
    assert main(["zoo", "eval", "resnet", "--size", "2", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "resnet-shapes:" in captured.out and "%|" not in captured.err


def test_ctrl_c_in_explainer_train_names_the_checkpoint_to_resume(tmp_path, capsys):
    """It said "interrupted" only, though the finished epochs were in OUT.ckpt."""
    import argparse
    import os
    import time
    from functools import partial

    from ctc_plugin.cli import _interrupted
    from ctc_plugin.commands.explainer import _resume_hint

    checkpoint = tmp_path / "e.pt.ckpt"
    checkpoint.write_bytes(b"an older run's")
    started = time.time() + 10  # the file predates this run: not its epochs
    args = argparse.Namespace(
        prog="ctc-plugin explainer train", interrupt_hint=partial(_resume_hint, checkpoint, started)
    )
    assert _interrupted(args) == 130
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("interrupted; no epoch had finished (nothing to resume)")
    )
    os.utime(checkpoint, (started + 5, started + 5))  # written by this run after its first epoch
    _interrupted(args)
    assert f"interrupted; the finished epochs are in {checkpoint}: add --resume {checkpoint}" in (
        capsys.readouterr().err
    )
