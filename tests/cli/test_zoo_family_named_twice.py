"""A family named twice is trained or evaluated once, as ``explain`` takes a file named twice once.

``zoo train resnet resnet`` trained the model twice (minutes each) to write the same file, and
``zoo eval vgg vgg`` printed the same line twice.
"""

from __future__ import annotations

from ctc_plugin.cli import main


def test_zoo_eval_evaluates_a_family_named_twice_once(capsys):
    assert main(["zoo", "eval", "vgg", "resnet", "vgg", "--size", "4", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["vgg-shapes", "resnet-shapes"]


def test_zoo_train_trains_a_family_named_twice_once(tmp_path, capsys):
    args = ["zoo", "train", "inception", "inception", "--size", "8", "--epochs", "1"]
    assert main([*args, "--eval-size", "4", "--out", str(tmp_path), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("inception-shapes: trained in")
