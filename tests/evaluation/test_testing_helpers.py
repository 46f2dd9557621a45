"""The test helpers of ``ctc_plugin.testing`` keep their promises."""

import pytest
import torch

from ctc_plugin.testing import RandomModernCNN, _Linearisable, random_partition


@pytest.mark.parametrize("spread", [0])
def test_random_partition_refuses_a_spread_that_merges_every_id(spread):
    with pytest.raises(ValueError, match="spread must be non-zero"):
        random_partition(4, 4, 5, spread=spread)


@pytest.mark.parametrize("features", [0, 17])
def test_random_partition_refuses_feature_counts_that_do_not_fit(features):
    with pytest.raises(ValueError, match="give 1 to 16"):
        random_partition(4, 4, features)


@pytest.mark.parametrize("spread", [1, 3, -2])
def test_random_partition_places_every_id_in_every_example(spread):
    masks = random_partition(5, 4, 7, seed=1, batch=3, spread=spread)
    expected = sorted(spread * k + 1 for k in range(7))
    for mask in masks:
        assert torch.unique(mask).tolist() == expected


def test_linearised_context_restores_the_model_after_an_error():
    model = RandomModernCNN()
    x = torch.rand(2, 3, 8, 8)
    before = model(x)
    with pytest.raises(RuntimeError, match="inside"), model.linearised():
        raise RuntimeError("inside")
    parts = [m for m in model.modules() if isinstance(m, _Linearisable)]
    assert parts and not any(part.linearised for part in parts)
    assert torch.equal(model(x), before)
