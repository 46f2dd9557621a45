"""``benchmarks/bench_sparse.py --parts``: where one sparse call spends its time, by rule.

The timed rules are wrapped for one call and put back after it; the nested parts (the
sharing inside BatchNorm, the ``"reference"`` formula, the full copy's statistics and the
packed boxes or the compiled formula inside the sharing) take at most their parent's time.
"""

from __future__ import annotations

import argparse

import pytest

from ctc_plugin.ctc import native

ARGS = argparse.Namespace(model="resnet18", size=112, features=16, mask="grid")


#: The parts of the ``"reference"`` sharing that only one way of computing the formula has.
TORCH_ONLY = "  packed boxes, their formula included"
COMPILED_ONLY = "  its compiled formula (native)"


@pytest.mark.parametrize("native_formula", [False, True])
def test_every_part_of_a_reference_call_is_timed_within_its_parent(bench_sparse, native_formula):
    if native_formula and native.library() is None:
        pytest.skip(f"no compiled kernel here: {native.unavailable_reason()}")
    runs = bench_sparse.methods(*bench_sparse.setup(ARGS), native_formula=native_formula)
    originals = {name: getattr(owner, attr) for name, (owner, attr) in bench_sparse.PARTS.items()}
    spent = bench_sparse.time_parts(runs["CTC reference, sparse"])
    assert set(spent) == {*bench_sparse.PARTS, "whole call"}
    unused = TORCH_ONLY if native_formula else COMPILED_ONLY
    assert spent[unused] == 0
    # the classifier's bias (one per unit) takes torch's formula either way
    assert all(seconds > 0 for part, seconds in spent.items() if part != unused), spent
    sharing = spent["bias sharing (affine)"]
    # the sharing runs inside BatchNorm, and for the classifier's bias outside it
    assert spent["BatchNorm, with its sharing"] <= spent["whole call"]
    assert sharing <= spent["whole call"]
    for nested in (
        "  its 'reference' formula (share_factors)",
        "  the full copy's statistics",
        TORCH_ONLY,
        COMPILED_ONLY,
    ):
        assert spent[nested] <= sharing, nested
    # the wrappers are gone again
    assert {
        name: getattr(owner, attr) for name, (owner, attr) in bench_sparse.PARTS.items()
    } == originals


def test_a_proportional_call_spends_nothing_in_the_reference_parts(bench_sparse):
    runs = bench_sparse.methods(*bench_sparse.setup(ARGS))
    spent = bench_sparse.time_parts(runs["CTC proportional, sparse"])
    assert spent["bias sharing (affine)"] > 0
    assert spent["  its 'reference' formula (share_factors)"] == 0
    assert spent[TORCH_ONLY] == 0
    assert spent[COMPILED_ONLY] == 0
