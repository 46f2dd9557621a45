"""Indexing a ShapesDataset: every integer type gives the item, anything else a clear TypeError."""

import numpy as np
import pytest
import torch

from ctc_plugin.datasets import ShapesDataset


@pytest.fixture(scope="module")
def data():
    return ShapesDataset("shapes", size=4, seed=2, image_size=32)


@pytest.mark.parametrize(
    "index", [np.int64(2), np.int32(-2), torch.tensor(2), torch.tensor(-2), np.array(2)]
)
def test_numpy_and_zero_dim_torch_integers_index_like_ints(data, index):
    expected = data[int(index)]
    item = data[index]
    assert item["label"] == expected["label"]
    assert torch.equal(item["image"], expected["image"])


@pytest.mark.parametrize(
    "index",
    [
        2.0, True, slice(0, 2), [0, 1], "1", None, torch.tensor([1]), torch.tensor(1.0),
        torch.tensor(True), np.array(1.0), np.array(True),
    ],
)  # fmt: skip
def test_other_indices_are_refused_with_what_to_give(data, index):
    with pytest.raises(TypeError, match=r"index must be a whole number.*Subset"):
        data[index]
    with pytest.raises(TypeError, match=r"index must be a whole number"):
        data.scene(index)


def test_out_of_range_indices_still_raise_index_error(data):
    for index in (4, -5, np.int64(4), torch.tensor(-5)):
        with pytest.raises(IndexError, match="out of range"):
            data[index]
