"""``zoo.evaluate`` on no images or in batches of none says so instead of dividing by zero."""

from __future__ import annotations

import pytest

from ctc_plugin import zoo


@pytest.mark.parametrize("arguments", [{"size": 0}, {"batch_size": 0}, {"size": -3}])
def test_an_empty_sample_or_batch_is_refused(arguments):
    model = zoo.build("densenet", 6)
    with pytest.raises(ValueError, match="size and batch_size must be positive"):
        zoo.evaluate(model, "shapes", **{"size": 4, "seed": 2, **arguments})
