"""write_split names what it takes when given something other than a ShapesDataset."""

import pytest
from torch.utils.data import Subset

from ctc_plugin.datasets import ShapesDataset, write_split


@pytest.mark.parametrize(
    "dataset", [Subset(ShapesDataset(size=3, image_size=32), [0, 2]), "shapes", None]
)
def test_other_data_sets_are_refused_before_anything_is_written(tmp_path, dataset):
    out = tmp_path / "out"
    with pytest.raises(TypeError, match=r"write_split takes a ShapesDataset.*size="):
        write_split(dataset, out, show_progress=False)
    assert not out.exists()
