"""``benchmarks/bench_ctc.py --batch N``: the row "CTC reference, one pass" on a CPU only.

``Speedups.copies_per_pass`` groups the examples of a batch on a CPU only; on a GPU every batch
is one pass, so the row would time "CTC reference" a second time. The rows are built, not timed
(no call runs); CUDA is faked (``FakeTensorMode``), so the check needs no GPU.
"""

from __future__ import annotations

import argparse

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

ONE_PASS = "CTC reference, one pass"


def _rows(bench_ctc, device: str, batch: int) -> list[str]:
    args = argparse.Namespace(features=4, no_variants=True, batch=batch, compiled_sharing=False)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten())
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.zeros(batch, 3, 8, 8, device=device)
        mask = torch.zeros(1, 1, 8, 8, dtype=torch.long, device=device)
    return list(bench_ctc.ctc_runs(model, x, 0, mask, args))


def test_the_one_pass_row_is_timed_on_a_cpu(bench_ctc):
    assert ONE_PASS in _rows(bench_ctc, "cpu", 16)
    assert ONE_PASS not in _rows(bench_ctc, "cpu", 1)


def test_the_one_pass_row_is_left_out_on_cuda_and_says_why_once(bench_ctc, capsys):
    rows = _rows(bench_ctc, "cuda", 16)
    assert ONE_PASS not in rows
    assert rows[:3] == ["CTC none", "CTC proportional", "CTC reference"]
    printed = capsys.readouterr().out
    assert printed.count(ONE_PASS) == 1 and "cuda" in printed
