"""The on-disk mask cache: keys, round trips, size cap, opt-out and unreadable entries."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ctc_plugin.features import FeatureTable, MaskCache, Segmenter, default_cache_dir, feature_table


class CountingSegmenter(Segmenter):
    """A grid-like segmenter that counts how often it really segments."""

    def __init__(self, cells: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cells = cells
        self.calls = 0

    def settings(self) -> dict[str, Any]:
        return {"cells": self.cells}

    def segment_image(self, image: np.ndarray) -> tuple[np.ndarray, FeatureTable]:
        self.calls += 1
        height, width = image.shape[:2]
        labels = (np.arange(height)[:, None] * self.cells // height) * self.cells + (
            np.arange(width)[None, :] * self.cells // width
        )
        return labels, feature_table(
            labels, scores={"quality": np.linspace(0, 1, labels.max() + 1)}
        )


def test_second_call_on_the_same_image_does_not_segment_again(tmp_path: Path):
    cache = MaskCache(tmp_path)
    segmenter = CountingSegmenter(cache=cache)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    first = segmenter.segment(images)
    assert segmenter.calls == 2
    second = segmenter.segment(images)
    assert segmenter.calls == 2 and cache.hits == 2
    assert torch.equal(first.mask, second.mask)
    for a, b in zip(first.features, second.features):
        assert np.array_equal(a.area, b.area) and np.array_equal(a.bbox, b.bbox)
        assert np.allclose(a.scores["quality"], b.scores["quality"])
    # another image, or other settings, miss
    segmenter(images.flip(-1))
    assert segmenter.calls == 4
    CountingSegmenter(cells=3, cache=cache)(images)
    assert len(list(tmp_path.glob("*.npz"))) == 6


def test_cache_is_keyed_by_what_the_segmenter_sees(tmp_path: Path):
    segmenter = CountingSegmenter(cache=tmp_path)
    images = torch.rand(1, 3, 8, 8)
    segmenter(images)
    segmenter(images * 0.5)  # a different image
    assert segmenter.calls == 2
    declared = CountingSegmenter(cache=tmp_path, value_range=(0, 255))
    declared(images * 255)  # the same RGB image as the first call
    assert declared.calls == 0


def test_opt_out(tmp_path: Path):
    segmenter = CountingSegmenter(cache=None)
    images = torch.rand(1, 3, 8, 8)
    segmenter(images)
    segmenter(images)
    assert segmenter.calls == 2 and segmenter.cache is None
    assert CountingSegmenter(cache=False).cache is None


def test_size_cap_removes_least_recently_used(tmp_path: Path):
    cache = MaskCache(tmp_path, max_bytes=1)
    segmenter = CountingSegmenter(cache=cache)
    images = torch.rand(3, 3, 8, 8)
    for index in range(3):
        segmenter(images[index : index + 1])
    # every entry is larger than one byte: only the newest survives
    assert len(list(tmp_path.glob("*.npz"))) == 1
    cache = MaskCache(tmp_path, max_bytes=10_000)
    segmenter = CountingSegmenter(cache=cache)
    segmenter(images)
    assert cache.size_bytes() <= 10_000
    cache.clear()
    assert cache.size_bytes() == 0


def test_unreadable_entry_is_a_clear_error(tmp_path: Path):
    cache = MaskCache(tmp_path)
    segmenter = CountingSegmenter(cache=cache)
    images = torch.rand(1, 3, 8, 8)
    segmenter(images)
    (entry,) = tmp_path.glob("*.npz")
    entry.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="delete it"):
        segmenter(images)


def test_entries_hold_no_pickles(tmp_path: Path):
    CountingSegmenter(cache=tmp_path)(torch.rand(1, 3, 8, 8))
    (entry,) = tmp_path.glob("*.npz")
    with np.load(entry, allow_pickle=False) as archive:
        assert {"labels", "area", "bbox", "source", "score_quality"} <= set(archive.files)


def test_default_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("CTC_PLUGIN_CACHE", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("CTC_PLUGIN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "ctc-plugin" / "masks"
    assert MaskCache().directory == tmp_path / "ctc-plugin" / "masks"
    assert CountingSegmenter(cache=True).cache.directory == tmp_path / "ctc-plugin" / "masks"
    assert os.fspath(CountingSegmenter(cache=str(tmp_path)).cache.directory) == str(tmp_path)
    with pytest.raises(TypeError, match="cache"):
        CountingSegmenter(cache=3)
