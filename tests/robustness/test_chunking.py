"""perturbations_per_eval changes memory and speed, never a float32 CTC score beyond rounding.

In ``"reference"`` mode every layer quantises its copies (``ceil(10 z)``, ``ceil(1000 ratio)``),
so a one-ulp change anywhere upstream can move a value across a step and change a score by far
more than rounding. The copies of one chunk of ``perturbations_per_eval`` features must
therefore be computed exactly as they are in one pass. These tests run float32 models with
trained weights (the zoo) and random ones, grid and irregular features, and compare every
chunking with the one-pass scores to within a few float32 ulps of the largest score.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin import CTC, zoo
from ctc_plugin.features import GridSegmenter
from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition

#: A chunked score may differ from the one-pass score by this many float32 ulps of the largest
#: score (the classifier's last matrix product may round differently for another batch size).
ULPS = 4


def _scores(model, x, mask, mode: str, per_eval: int | None) -> torch.Tensor:
    ctc = CTC(model, bias_sharing=mode)
    _, scores = ctc.attribute(
        x, target=1, feature_mask=mask, perturbations_per_eval=per_eval, return_feature_scores=True
    )
    return scores.scores


def assert_within_rounding(chunked: torch.Tensor, once: torch.Tensor) -> None:
    """The two float32 score tables agree to ``ULPS`` ulps of the largest score."""
    tolerance = ULPS * torch.finfo(torch.float32).eps * once.abs().max().item()
    difference = (chunked - once).abs().max().item()
    assert difference <= tolerance, (
        f"scores differ by {difference:.3g} (> {tolerance:.3g}, {ULPS} ulps of the largest score)"
    )


@pytest.mark.parametrize("family", ["resnet", "efficientnet", "densenet"])
@pytest.mark.parametrize("mode", ["reference", "none"])
def test_zoo_scores_do_not_depend_on_the_chunk_size(family, mode):
    torch.manual_seed(0)
    model = zoo.load(family)
    x = torch.rand(2, 3, 96, 96)
    mask = GridSegmenter(4)(x)
    once = _scores(model, x, mask, mode, None)
    for per_eval in (1, 3):
        assert_within_rounding(_scores(model, x, mask, mode, per_eval), once)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    features=st.integers(2, 12),
    per_eval=st.integers(1, 5),
    batch=st.integers(1, 2),
)
def test_random_cnn_scores_do_not_depend_on_the_chunk_size(seed, features, per_eval, batch):
    model = RandomCNN(CNNSpec(), seed=seed)
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    mask = random_partition(32, 32, features, seed=seed, batch=batch)
    once = _scores(model, x, mask, "reference", None)
    assert_within_rounding(_scores(model, x, mask, "reference", per_eval), once)
