"""The on-disk mask cache: keys, round trips, size cap, opt-out and damaged entries.

The robustness side (other files, shared use, damage, unusable folders) is in
tests/robustness/test_mask_cache.py.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ctc_plugin.features import (
    CorruptCacheEntryWarning,
    FeatureTable,
    MaskCache,
    Segmenter,
    SuperpixelSegmenter,
    default_cache_dir,
    feature_table,
)
from ctc_plugin.features.base import installed_version


def entries(folder: Path) -> list[Path]:
    """The cache's entry files (``ab/cd/<hex>.val``)."""
    return sorted(folder.glob("*/*/*.val"))


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
    assert len(entries(tmp_path)) == 6


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
    segmenter(images)
    # the index alone is over one byte: nothing is kept, every call segments
    assert entries(tmp_path) == []
    segmenter(images)
    assert segmenter.calls == 6 and cache.hits == 0
    cache = MaskCache(tmp_path, max_bytes=40_000)
    segmenter = CountingSegmenter(cache=cache)
    empty = cache.size_bytes()
    images = torch.rand(40, 3, 8, 8)
    segmenter(images[:1])
    for index in range(1, 40):
        segmenter(images[index : index + 1])
        segmenter(images[:1])  # image 0 stays the most recently used
    assert cache.size_bytes() <= 40_000
    assert 1 < len(entries(tmp_path)) < 40
    assert segmenter.calls == 40 and cache.hits == 39
    segmenter(images[1:2])  # the least recently used went first
    assert segmenter.calls == 41
    cache.clear()
    assert entries(tmp_path) == [] and cache.size_bytes() <= empty


def test_damaged_entry_is_recomputed_with_a_warning(tmp_path: Path):
    cache = MaskCache(tmp_path)
    segmenter = CountingSegmenter(cache=cache)
    images = torch.rand(1, 3, 8, 8)
    first = segmenter(images)
    (entry,) = entries(tmp_path)
    entry.write_bytes(b"not a zip file")
    with pytest.warns(CorruptCacheEntryWarning, match="damaged") as caught:
        assert torch.equal(segmenter(images), first)
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert segmenter.calls == 2
    segmenter(images)
    assert segmenter.calls == 2 and cache.hits == 1


def test_entries_hold_no_pickles(tmp_path: Path):
    CountingSegmenter(cache=tmp_path)(torch.rand(1, 3, 8, 8))
    (entry,) = entries(tmp_path)
    with np.load(entry, allow_pickle=False) as archive:
        assert {"labels", "area", "bbox", "source", "score_quality"} <= set(archive.files)


def test_cache_pickles_and_keeps_working(tmp_path: Path):
    cache = MaskCache(tmp_path, max_bytes=100_000)
    segmenter = CountingSegmenter(cache=cache)
    images = torch.rand(1, 3, 8, 8)
    segmenter(images)
    copy = pickle.loads(pickle.dumps(segmenter))
    assert copy.cache.directory == tmp_path and copy.cache.max_bytes == 100_000
    copy(images)
    assert copy.calls == 1 and copy.cache.hits == 1


def test_default_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("CTC_PLUGIN_CACHE", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here" / "masks"  # the kernels' folder beside it
    monkeypatch.delenv("CTC_PLUGIN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "ctc-plugin" / "masks"
    assert MaskCache().directory == tmp_path / "ctc-plugin" / "masks"
    assert CountingSegmenter(cache=True).cache.directory == tmp_path / "ctc-plugin" / "masks"
    assert os.fspath(CountingSegmenter(cache=str(tmp_path)).cache.directory) == str(tmp_path)
    with pytest.raises(TypeError, match="cache"):
        CountingSegmenter(cache=3)


def test_settings_that_hold_arrays_are_keyed_by_their_content(tmp_path: Path):
    """Two foreground masks of SLIC that differ only in the middle (``str`` of an array of more
    than 1000 values abbreviates it to ``...``) are two settings, with their own entries."""
    first = np.zeros((64, 64), bool)
    first[8:40, 8:40] = True
    second = np.zeros((64, 64), bool)
    second[24:56, 24:56] = True
    a = SuperpixelSegmenter(mask=first, cache=tmp_path)
    b = SuperpixelSegmenter(mask=second, cache=tmp_path)
    assert a.settings_key() != b.settings_key()
    assert a.settings_key() == SuperpixelSegmenter(mask=first.copy()).settings_key()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a(x)
    torch.testing.assert_close(b(x), SuperpixelSegmenter(mask=second)(x), rtol=0, atol=0)


def test_an_entry_whose_ids_have_gaps_is_recomputed_with_a_warning(tmp_path: Path):
    """Ids {0, 2} with a table of several rows were served: no 0..K-1 mask (Lime needs one)."""
    import io

    cache = MaskCache(tmp_path)
    segmenter = CountingSegmenter(cache=cache)
    images = torch.rand(1, 3, 8, 8)
    first = segmenter(images)
    assert first.max() >= 2
    (entry,) = entries(tmp_path)
    arrays = dict(np.load(entry))
    arrays["labels"] = np.zeros_like(arrays["labels"])
    arrays["labels"][0, 0] = 2
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    entry.write_bytes(buffer.getvalue())
    with pytest.warns(CorruptCacheEntryWarning, match="not 0..3, each on some pixel"):
        assert torch.equal(segmenter(images), first)
    assert segmenter.calls == 2


@pytest.mark.parametrize(
    ("make", "library"),
    [
        (lambda cache: SuperpixelSegmenter(cache=cache), "scikit-image"),
        (lambda cache: SuperpixelSegmenter(cache=cache), "ctc-plugin"),
        (lambda cache: CountingSegmenter(cache=cache), "numpy"),
    ],
    ids=["skimage-slic", "own-version", "numpy"],
)
def test_an_upgrade_of_a_library_that_makes_the_masks_segments_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make, library: str
):
    """Masks of the old library's algorithm were served after an upgrade."""
    import importlib.metadata

    installed = importlib.metadata.version
    segmenter = make(tmp_path)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    segmenter(x)
    before = segmenter.settings_key()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(
                importlib.metadata,
                "version",
                lambda name: "999.0" if name == library else installed(name),
            )
            assert segmenter.settings_key() == before  # versions are read once per process
            installed_version.cache_clear()  # as after a restart
            assert segmenter.settings_key() != before
            segmenter(x)
            assert segmenter.cache.misses == 2 and segmenter.cache.hits == 0
    finally:
        installed_version.cache_clear()  # the real versions for the tests after this one


def test_sam_keys_count_the_libraries_that_make_its_masks():
    from ctc_plugin.adapters.sam import SAMSegmenter

    assert {"segment-anything", "torch", "torchvision"} <= set(SAMSegmenter.result_libraries)


def test_a_library_installed_under_another_distribution_name_is_found(monkeypatch):
    """SAM 2 installed from its clone is the distribution 'SAM 2': its version was 'absent'
    for the name 'sam2', so an upgrade kept serving the old masks."""
    import importlib.metadata

    real_version, real_packages = (
        importlib.metadata.version,
        importlib.metadata.packages_distributions,
    )

    def version(name):
        if name == "SAM 2":
            return "1.1"
        return real_version(name)  # 'sam2' is not installed under that name

    def packages():
        return {**real_packages(), "sam2": ["SAM 2"]}

    try:
        with monkeypatch.context() as patch:
            patch.setattr(importlib.metadata, "version", version)
            patch.setattr(importlib.metadata, "packages_distributions", packages)
            installed_version.cache_clear()
            assert installed_version("sam2") == "SAM 2 1.1"
            assert installed_version("no-such-library") == "absent"
    finally:
        installed_version.cache_clear()


def test_the_superpixel_segmenter_s_version_is_part_of_its_key(monkeypatch):
    """Small superpixels are merged into neighbours since version 2; a cache written before
    (dropped superpixels, rebuilt from the remainder) must not serve its masks."""
    segmenter = SuperpixelSegmenter()
    assert segmenter.settings()["version"] == 2
    key = segmenter.settings_key()
    settings = SuperpixelSegmenter.settings
    monkeypatch.setattr(
        SuperpixelSegmenter, "settings", lambda self: {**settings(self), "version": 1}
    )
    assert segmenter.settings_key() != key
