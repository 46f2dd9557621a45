"""An empty evidence mask: NaN here; what the evaluation page says Quantus 0.6.0 gives.

Quantus's rank and mass accuracy give NaN; its pointing game writes the NaN into a boolean
array, where it reads as a hit. The page says so; this keeps it true for the installed Quantus.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ctc_plugin.evaluation.localisation import (
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)


def test_an_empty_mask_scores_nan_where_quantus_pointing_game_counts_a_hit():
    quantus = pytest.importorskip("quantus")  # an extra (bench)
    maps = np.random.default_rng(0).random((1, 1, 4, 4)).astype(np.float32)
    empty = np.zeros((1, 1, 4, 4), np.float32)
    for metric in (pointing_game, relevance_mass_accuracy, relevance_rank_accuracy):
        assert np.isnan(metric(maps, empty).item()), metric.__name__
    kw = {"disable_warnings": True, "normalise": False, "abs": False}
    theirs = {}
    for name in ("PointingGame", "RelevanceMassAccuracy", "RelevanceRankAccuracy"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (score,) = getattr(quantus, name)(**kw)(
                model=None,
                x_batch=np.zeros((1, 3, 4, 4), np.float32),
                y_batch=np.zeros(1, dtype=int),
                a_batch=maps,
                s_batch=empty,
            )
        theirs[name] = float(score)
    assert theirs["PointingGame"] == 1.0
    assert np.isnan(theirs["RelevanceMassAccuracy"]) and np.isnan(theirs["RelevanceRankAccuracy"])
