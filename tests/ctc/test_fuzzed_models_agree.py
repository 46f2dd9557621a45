"""Differential fuzzing of CTC's passes: every route gives the same scores on random models.

The models, masks and checks are in `tests/ctc/fuzz_models.py`: small classifiers composed from
the operation table (convolutions of every form, norms, poolings, activations with and without
``f(0) = 0``, squeeze-excitation gates, residual sums, concatenations, attention written five
ways, linear heads written eight ways) explained with SAM-like masks. On each, in every mode,
the speed-ups give the spec's scores (float64 1e-10 of the largest score), the Zennit attributor
the Captum class's, ``"proportional"`` adds up to the logit, ``"none"`` is gradient x input on
piecewise-linear models, each image alone gets its row of the batch's scores, and no call
changes the model. An operation without a rule is refused by both routes with the model intact.

A fixed set of seeds runs here; ``make test-slow`` runs a few hundred, and ``python -m
tests.ctc.fuzz_models --seeds 0 1000`` any range.
"""

from __future__ import annotations

import pytest
import torch

from .fuzz_models import VARIANTS, check_case, check_refusal, random_case

#: The speed-ups of the fast run: each family once, and the default.
FAST_VARIANTS = {
    name: VARIANTS[name]
    for name in (
        "gradient shortcut",
        "one example per pass",
        "fused, small blocks",
        "sparse, fused, every row",
        "default",
    )
}

#: Seeds whose models cover the block kinds between them: attention written with ``@``,
#: ``einsum``, ``baddbmm``, ``scaled_dot_product_attention`` and ``nn.MultiheadAttention``;
#: squeeze-excitation, residual sums and concatenations (with a constant channel); every
#: norm; max pooling with ``ceil_mode``; activations with ``f(0) != 0`` (softplus, erfc, a
#: shifted ELU, sigmoid); heads written as ``mm``, ``mv``, ``tensordot``, ``einsum``,
#: ``addmm`` and with an expanded bias.
FAST_SEEDS = [0, 1, 3, 9, 10, 14, 16, 20, 26, 34]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("seed", FAST_SEEDS)
def test_every_route_agrees_on_a_fuzzed_model(seed: int) -> None:
    check_case(random_case(seed), variants=FAST_VARIANTS, float32=False)


@pytest.mark.parametrize("seed", [2, 16])
def test_an_operation_without_a_rule_is_refused_by_both_routes(seed: int) -> None:
    check_refusal(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(300))
def test_every_route_agrees_on_many_fuzzed_models(seed: int) -> None:
    check_case(random_case(seed))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(60))
def test_operations_without_a_rule_are_refused_in_many_fuzzed_models(seed: int) -> None:
    check_refusal(seed)
