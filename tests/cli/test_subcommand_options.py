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
