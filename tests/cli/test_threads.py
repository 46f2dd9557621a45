"""``--threads``: the torch CPU thread count of the training and benchmark commands."""

from __future__ import annotations

import threading

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


def _in_a_thread(count, leave):
    """A thread in ``torch_threads(count)`` until ``leave`` is set; returned once inside."""
    entered = threading.Event()

    def run():
        with torch_threads(count):
            entered.set()
            leave.wait(60)

    thread = threading.Thread(target=run)
    thread.start()
    assert entered.wait(60)
    return thread


def _process_count():
    """The count the process runs on: what a thread started now gets (a thread's own OpenMP
    count is set for it, not for the others, by its own ``torch.set_num_threads``)."""
    counts = []
    thread = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return counts[0]


@pytest.mark.parametrize("first_ends_first", [True, False])
def test_overlapping_thread_counts_give_back_the_count_from_before_them(first_ends_first):
    """``main`` in two threads with --threads 1 and --threads 2: torch's count is one for the
    process. While both run it is the later one's; when one ends, the other's again; when both
    have ended, the count from before them (was: whichever call's saved count came back last,
    1 in both orders)."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    leave = {1: threading.Event(), 2: threading.Event()}
    threads = {}
    try:
        threads[1] = _in_a_thread(1, leave[1])
        assert _process_count() == 1
        threads[2] = _in_a_thread(2, leave[2])
        assert _process_count() == 2  # the one that started last
        first, second = (1, 2) if first_ends_first else (2, 1)
        leave[first].set()
        threads[first].join()
        assert _process_count() == second  # the one still running
        leave[second].set()
        threads[second].join()
        assert _process_count() == 3
    finally:
        for count, thread in threads.items():
            leave[count].set()
            thread.join()
        torch.set_num_threads(before)


def test_a_block_that_ends_gives_back_the_latest_running_count_even_if_equal_to_its_own():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    leave = [threading.Event() for _ in range(3)]
    threads = []
    try:
        for count, event in zip((2, 1, 2), leave):
            threads.append(_in_a_thread(count, event))
        for index, expected in ((2, 1), (1, 2), (0, 3)):  # the newest ends first
            leave[index].set()
            threads[index].join()
            assert _process_count() == expected
    finally:
        for thread, event in zip(threads, leave):
            event.set()
            thread.join()
        torch.set_num_threads(before)


def test_nested_thread_counts_in_one_thread_unwind_in_order():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with torch_threads(1):
            with torch_threads(2), torch_threads(None) as count:
                assert count == 2 == torch.get_num_threads()
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


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


def test_zoo_eval_runs_on_threads_and_restores_the_count(monkeypatch, capsys):
    """``zoo eval`` had no --threads: it ran on torch's count whatever the other commands took."""
    import ctc_plugin.zoo as zoo

    before, seen = torch.get_num_threads(), []
    measure = zoo.evaluate

    def evaluate(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return measure(*args, **kwargs)

    monkeypatch.setattr(zoo, "evaluate", evaluate)
    assert main(["zoo", "eval", "vgg", "--size", "2", "--threads", str(before + 1)]) == 0
    assert seen == [before + 1] and torch.get_num_threads() == before
    assert main(["zoo", "eval", "vgg", "--size", "2", "--threads", "0"]) == 2
    assert "argument --threads: must be at least 1, got 0" in capsys.readouterr().err
