"""perturbations_per_eval changes memory and speed, never a CTC score beyond rounding.

In ``"reference"`` mode every layer quantises its copies (``ceil(10 z)``, ``ceil(1000 ratio)``),
so a one-ulp change anywhere upstream can move a value across a step and change a score by far
more than rounding. The copies of one chunk of ``perturbations_per_eval`` features must
therefore be computed as they are in one pass, up to what the CPU's kernels round differently
for another batch size: on an Intel Xeon (AVX-512, one thread) the 1 x 1 convolutions of the
zoo efficientnet's squeeze-excitation gates do, and its float32 ``"reference"`` scores moved
by 5e-4 between chunk sizes (2900 ulps of the largest score), where float64 agrees to 1 ulp.
So ``"reference"`` is compared in float64 and ``"none"`` in float32; models with trained
weights (the zoo) and random ones, grid and irregular features, every chunking against the
one-pass scores to within a few ulps of the largest score.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin import CTC, zoo
from ctc_plugin.features import GridSegmenter
from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition

#: A chunked score may differ from the one-pass score by this many ulps of the largest score
#: (the classifier's last matrix product may round differently for another batch size).
ULPS = 4

#: The dtype each mode is compared in (see the module's docstring).
DTYPES = {"reference": torch.float64, "none": torch.float32}


def _scores(model, x, mask, mode: str, per_eval: int | None) -> torch.Tensor:
    model, x = model.to(DTYPES[mode]), x.to(DTYPES[mode])
    ctc = CTC(model, bias_sharing=mode)
    _, scores = ctc.attribute(
        x, target=1, feature_mask=mask, perturbations_per_eval=per_eval, return_feature_scores=True
    )
    return scores.scores


def assert_within_rounding(chunked: torch.Tensor, once: torch.Tensor) -> None:
    """The two score tables agree to ``ULPS`` ulps (of their dtype) of the largest score."""
    tolerance = ULPS * torch.finfo(once.dtype).eps * once.abs().max().item()
    difference = (chunked - once).abs().max().item()
    assert difference <= tolerance, (
        f"scores differ by {difference:.3g} (> {tolerance:.3g}, {ULPS} ulps of the largest score)"
    )


@pytest.mark.parametrize(
    "family",
    # the larger two run in make test-slow; the random CNNs below cover chunking in make test
    ["resnet", *(pytest.param(f, marks=pytest.mark.slow) for f in ("efficientnet", "densenet"))],
)
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
