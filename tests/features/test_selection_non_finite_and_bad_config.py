"""select_features refuses non-finite heatmaps, and SelectionConfig refuses values it cannot use."""

from __future__ import annotations

import warnings

import pytest
import torch

from ctc_plugin.features import GridSegmenter, SelectionConfig, select_features


@pytest.mark.parametrize("size", [8, 32])  # 8: cells too small for Jenks; 32: Jenks runs
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_heatmap_with_nan_or_inf_is_a_clear_error(size, bad):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, size, size, generator=generator)
    relevance = torch.rand(2, size, size, generator=generator)
    relevance[1, 2, 3] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match=r"1 NaN or infinite values \(first in image 1\)"):
            select_features(GridSegmenter(2)(images), images, relevance)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("k", 2.5, "k must be an int"),
        ("grid", 2.0, "grid must be an int"),
        ("min_samples", True, "min_samples must be an int"),
        ("eps", float("nan"), "eps must be a finite number"),
        ("relevance_weight", float("inf"), "relevance_weight must be a finite number"),
        ("eps_step", -1.0, "eps_step, min_samples_step and max_clusters must be >= 0"),
        ("min_samples_step", -2, "must be >= 0"),
        ("max_clusters", -1, "must be >= 0"),
    ],
)
def test_config_values_the_search_cannot_use_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        SelectionConfig(**{field: value})


def test_integral_floats_and_numpy_numbers_where_they_fit():
    import numpy as np

    config = SelectionConfig(k=np.int64(3), eps=10, percentile=np.float32(90.0))
    assert config.k == 3 and config.eps == 10
