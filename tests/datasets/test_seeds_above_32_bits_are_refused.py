"""A seed of 2**32 or more is refused: it would repeat the items of smaller seeds.

Item ``i`` is drawn from ``default_rng([seed, split, i])``; NumPy's ``SeedSequence`` reads a seed
from 2**32 on as two 32-bit words and pads short lists with zeros, so
``ShapesDataset("shapes", seed=2**32)[0]`` was ``ShapesDataset("shapes", seed=0)[1]``: a
training image of the zoo in what the guide calls a fresh sample.
"""

from __future__ import annotations

import pytest

from ctc_plugin.datasets import ShapesDataset


@pytest.mark.parametrize("seed", [2**32, 2**32 + 7, 2**40, 2**64])
def test_a_seed_of_more_than_32_bits_is_refused(seed):
    with pytest.raises(ValueError, match=r"^seed must be below 2\*\*32 .*got " + str(seed)):
        ShapesDataset("shapes", size=2, seed=seed)


def test_the_largest_32_bit_seed_is_a_sample_of_its_own():
    largest = ShapesDataset("composite", size=2, seed=2**32 - 1)
    assert largest.seed == 2**32 - 1
    assert largest.scene(0) != ShapesDataset("composite", size=2, seed=0).scene(0)
