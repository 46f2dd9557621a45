"""``perturbations_per_eval`` takes NumPy integers, and a refusal says what it was given.

Before, ``np.int64(2)`` (a count read from an array or a config) was refused with "must be a
positive int or None", which did not say what was wrong with it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctc_plugin import CTC
from ctc_plugin.testing import RandomCNN, random_partition


def _scores(per_eval):
    model = RandomCNN(seed=0).eval()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = random_partition(16, 16, 5, seed=1)
    return (
        CTC(model, bias_sharing="reference")
        .attribute(
            x, 1, feature_mask=mask, perturbations_per_eval=per_eval, return_feature_scores=True
        )[1]
        .scores
    )


def test_a_numpy_integer_is_a_count():
    torch.testing.assert_close(_scores(np.int64(2)), _scores(2))


@pytest.mark.parametrize("bad", [2.0, True, "2"], ids=["float", "bool", "str"])
def test_other_values_are_refused_with_what_was_given(bad):
    with pytest.raises(ValueError, match=rf"positive int or None, got {bad!r} \("):
        _scores(bad)
