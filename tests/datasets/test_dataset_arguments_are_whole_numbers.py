"""A size, seed or image size that is no whole number is refused when the data set is made."""

from __future__ import annotations

import numpy as np
import pytest

from ctc_plugin.datasets import ShapesDataset


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"size": 2.5}, "size"),
        ({"size": "3"}, "size"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"image_size": 40.5}, "image_size"),
    ],
)
def test_the_argument_at_fault_is_named_at_once(arguments, named):
    with pytest.raises(ValueError, match=f"^{named} must be a whole number"):
        ShapesDataset("shapes", **{"size": 2, **arguments})


def test_numpy_integers_are_whole_numbers():
    data = ShapesDataset("shapes", size=np.int64(2), seed=np.int32(3), image_size=np.int64(32))
    assert len(data) == 2 and data.image_size == 32
    assert data[1]["image"].shape == (3, 32, 32)
    assert data.scene(1) == ShapesDataset("shapes", size=2, seed=3, image_size=32).scene(1)


def test_a_split_that_is_no_string_is_the_documented_value_error():
    """ShapesDataset(["shapes"]) raised TypeError: unhashable type: 'list'."""
    import pytest

    from ctc_plugin.datasets import ShapesDataset

    with pytest.raises(ValueError, match=r"unknown split \['shapes'\]"):
        ShapesDataset(["shapes"])
