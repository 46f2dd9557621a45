"""relevant_pixels computes its Jenks breaks in exactly grid x grid cells, whatever the size."""

from __future__ import annotations

from unittest import mock

import jenkspy
import numpy as np
import pytest

from ctc_plugin.features import SelectionConfig
from ctc_plugin.features import selection as selection_module


@pytest.mark.parametrize(("size", "grid"), [(100, 16), (9, 2), (30, 7), (96, 4), (50, 3)])
def test_every_cell_of_the_grid_gets_its_own_breaks(size, grid):
    relevance = np.random.default_rng(size).random((size, size + 3))
    cells: list[int] = []
    real = jenkspy.jenks_breaks

    def counting(values, n_classes):
        cells.append(values.size)
        return real(values, n_classes)

    with mock.patch.object(selection_module.jenkspy, "jenks_breaks", side_effect=counting):
        selection_module.relevant_pixels(relevance, SelectionConfig(grid=grid, jenks_classes=2))
    assert len(cells) == grid * grid
    assert sum(cells) == relevance.size
    side = [size // grid, -(-size // grid)]  # cell heights differ by at most one pixel
    widths = [(size + 3) // grid, -(-(size + 3) // grid)]
    assert {a * b for a in side for b in widths} >= set(cells)
