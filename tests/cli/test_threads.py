"""``--threads``: the torch CPU thread count of the training and benchmark commands."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from ctc_plugin.cli import main
from ctc_plugin.commands import torch_threads
from ctc_plugin.explainer.network import Explainer


def test_torch_threads_sets_the_count_inside_and_restores_it_after():
    before = torch.get_num_threads()
    with torch_threads(None) as count:
        assert count == before  # keep torch's count
    with torch_threads(before + 1) as count:
        assert count == before + 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(before + 1):
        raise RuntimeError("a failed command")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="--threads must be at least 1, got 0"), torch_threads(0):
        pass
    with pytest.raises(ValueError, match="at most 1024, got 100000"), torch_threads(100000):
        pass  # the Python entry points (RunPlan's threads) too: torch crashed the process
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    "command",
    [
        ["zoo", "train", "resnet", "--size", "8", "--epochs", "1"],
        ["benchmark", "--quick", "--no-progress"],
        ["explainer", "train", "--model", "resnet"],
        ["explainer", "gate", "--model", "resnet"],
    ],
)
def test_every_training_and_benchmark_command_checks_threads(command, tmp_path, capsys):
    assert main([*command, "--threads", "0", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "argument --threads: must be at least 1, got 0" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before any work
    # torch crashed the process (a segfault) on 100000 threads
    assert main([*command, "--threads", "100000", "--out", str(tmp_path / "out")]) == 2
    assert "argument --threads: must be at most 1024, got 100000" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["explain", "explain-dataset"])
def test_the_explaining_commands_refuse_more_threads_than_any_machine_has(
    command, capsys, tmp_path
):
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main([command, str(image), "--threads", "100000"]) == 2
    assert "argument --threads: must be at most 1024, got 100000" in capsys.readouterr().err


def test_explainer_train_runs_on_threads_records_them_and_restores_the_count(tmp_path):
    before = torch.get_num_threads()
    out = tmp_path / "e.pt"
    small = ["--train-size", "8", "--val-size", "4", "--batch-size", "4", "--width", "2"]
    argv = ["explainer", "train", "--model", "resnet", "--epochs", "1", *small, "--no-progress"]
    assert main([*argv, "--threads", str(before + 1), "--out", str(out)]) == 0
    explainer = Explainer.load(out)
    assert explainer.metadata["threads"] == before + 1
    assert explainer.metadata["command"].endswith(f"--threads {before + 1}")
    assert torch.get_num_threads() == before
    assert main([*argv, "--depth", "1", "--threads", str(before + 1)]) == 2  # a failed call
    assert torch.get_num_threads() == before
