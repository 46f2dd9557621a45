"""``select_features`` takes its constants as one ``SelectionConfig``, honoured field by field."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin.features import SelectionConfig, select_features
from ctc_plugin.features import selection as selection_module
from tests.strategies import selection_configs


def grid_partition(size: int = 32, cells: int = 4) -> torch.Tensor:
    index = torch.arange(size) * cells // size
    return (index[:, None] * cells + index[None, :])[None, None]


@settings(max_examples=15, deadline=None)
@given(config=selection_configs(), seed=st.integers(0, 1000))
def test_every_field_reaches_the_step_that_uses_it(config, seed):
    """The config object itself reaches both steps; ``k`` shapes the returned partition."""
    seen = []
    real_pixels = selection_module.relevant_pixels
    real_clusters = selection_module.cluster_relevant_pixels

    def pixels(relevance, used):
        seen.append(used)
        return real_pixels(relevance, used)

    def clusters(keep, relevance, rgb, used):
        seen.append(used)
        return real_clusters(keep, relevance, rgb, used)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(selection_module, "relevant_pixels", pixels)
        patch.setattr(selection_module, "cluster_relevant_pixels", clusters)
        generator = torch.Generator().manual_seed(seed)
        relevance = torch.rand(2, 32, 32, generator=generator) ** 4
        images = torch.rand(2, 3, 32, 32, generator=generator)
        with warnings.catch_warnings():  # random configs often end the search unconverged
            warnings.simplefilter("ignore", RuntimeWarning)
            result = select_features(grid_partition(), images, relevance, config=config)
    assert len(seen) == 4 and all(used is config for used in seen)
    kept = min(config.k, 16)
    for index in range(2):
        ids = torch.unique(result.mask[index]).tolist()
        assert ids == list(range(kept + (config.k < 16)))
        assert len(result.selected[index]) == kept


def blob_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    relevance = 0.01 * torch.rand(1, 32, 32, generator=generator)
    relevance[0, 8:16, 16:24] += 1.0 + 0.1 * torch.rand(8, 8, generator=generator)
    return grid_partition(), torch.full((1, 3, 32, 32), 0.5), relevance


@pytest.mark.parametrize(
    ("field", "value", "check"),
    [
        ("k", 2, lambda r: torch.unique(r.mask).tolist() == [0, 1, 2]),
        ("k", 15, lambda r: torch.unique(r.mask).numel() == 16),
        ("percentile", 100.0, lambda r: (r.clusters[0] < 0).all()),  # nothing above the max
        ("max_search_steps", 1, lambda r: r.converged == [True]),
    ],
)
def test_changed_fields_change_the_result(field, value, check):
    partition, images, relevance = blob_case()
    base = SelectionConfig(min_samples=5)
    result = select_features(
        partition, images, relevance, config=dataclasses.replace(base, **{field: value})
    )
    assert check(result)


def test_search_fields_drive_the_dbscan_search(dbscan_fits):
    """eps, min_samples, their steps, max_clusters and max_search_steps set the search."""
    fits = dbscan_fits
    partition, images, relevance = blob_case()
    config = SelectionConfig(
        eps=3.0, min_samples=4, eps_step=0.5, min_samples_step=3, max_clusters=0, max_search_steps=3
    )
    with pytest.warns(RuntimeWarning, match="within 3 steps"):
        result = select_features(partition, images, relevance, config=config)
    assert [f["eps"] for f in fits] == [3.0, 3.5, 4.0]
    assert [f["min_samples"] for f in fits] == [4, 7, 10]
    assert result.converged == [False]


def test_old_keywords_say_where_they_went():
    partition, images, relevance = blob_case()
    with pytest.raises(TypeError, match=r"config=SelectionConfig\(k=3, eps=5\.0\)"):
        select_features(partition, images, relevance, k=3, eps=5.0)
    with pytest.raises(TypeError, match=r"always returns a FeatureSelection.*\.mask"):
        select_features(partition, images, relevance, return_details=True)
    with pytest.raises(TypeError, match="config must be a SelectionConfig"):
        select_features(partition, images, relevance, config={"k": 3})
    with pytest.raises(TypeError, match="unexpected keyword"):  # a plain typo stays Python's
        select_features(partition, images, relevance, kk=3)


def test_the_default_config_is_the_published_selection():
    partition, images, relevance = blob_case()
    default = select_features(partition, images, relevance)
    explicit = select_features(partition, images, relevance, config=SelectionConfig())
    assert torch.equal(default.mask, explicit.mask)
    assert all(
        np.array_equal(a, b) for a, b in zip(default.selected, explicit.selected, strict=True)
    )
