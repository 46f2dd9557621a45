"""Exported file names sort in index order, whatever the size of the data set."""

import pytest
import torch

import ctc_plugin.datasets.export as export
from ctc_plugin.datasets import ShapesDataset, write_split


class ManyTinyItems(ShapesDataset):
    """A data set of ``size`` copies of one small item (rendering 100,001 would take minutes)."""

    def __getitem__(self, index):
        return {
            "image": torch.zeros(3, 1, 1),
            "label": 0,
            "evidence": torch.zeros(1, 1, dtype=torch.bool),
            "instances": torch.zeros(1, 1, dtype=torch.int64),
        }


@pytest.mark.slow  # 100,001 items: seconds; the five-digit names below run in make test
def test_more_than_100000_images_get_names_that_sort_by_index(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(export, "_to_png", lambda array, path: written.append(path))
    write_split(ManyTinyItems("shapes", size=100_001, seed=3), tmp_path, show_progress=False)
    images = [path.name for path in written if path.parent.name == "images"]
    assert len(images) == 100_001 and len(set(images)) == 100_001
    assert sorted(images) == images
    assert images[0] == "000000.png" and images[-1] == "100000.png"


def test_up_to_100000_images_keep_five_digits(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(export, "_to_png", lambda array, path: written.append(path))
    write_split(ManyTinyItems("shapes", size=12, seed=3), tmp_path, show_progress=False)
    assert [p.name for p in written if p.parent.name == "images"][-1] == "00011.png"
