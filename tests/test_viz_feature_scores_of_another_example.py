"""plot_segment_scores refuses FeatureScores whose first example has another feature mask.

A FeatureScores panel shows the first example of its call. Given a batch's scores with
per-example masks and the second image's mask, it painted image 0's scores on image 1's
segments by id number, without a word. The scores carry the mask their call used: where the
first example's map differs from the one drawn, the panel is refused with the way to pass
another example's scores.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ctc_plugin import CTC  # noqa: E402
from ctc_plugin.features import GridSegmenter  # noqa: E402
from ctc_plugin.testing import RandomCNN  # noqa: E402
from ctc_plugin.viz import plot_segment_scores  # noqa: E402


def _call() -> tuple[torch.Tensor, torch.Tensor, object]:
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    masks = torch.cat([GridSegmenter((2, 2))(images[:1]), GridSegmenter((3, 1))(images[:1])])
    _, scores = CTC(RandomCNN(seed=0)).attribute(
        images, 1, feature_mask=masks, return_feature_scores=True
    )
    return images, masks, scores


def test_another_example_s_mask_is_refused_with_how_to_pass_its_scores():
    images, masks, scores = _call()
    with pytest.raises(ValueError, match=r"first example.*dict\(scores\.ranked\(i\)\)"):
        plot_segment_scores(images[1], masks[1, 0], {"CTC": scores})
    figure = plot_segment_scores(images[1], masks[1, 0], {"CTC": dict(scores.ranked(1))})
    painted = np.ma.filled(figure.axes[1].images[1].get_array().astype(float), np.nan)
    expected = scores.scores[1][masks[1, 0]].numpy()
    np.testing.assert_allclose(painted, expected, rtol=1e-6)
    plt.close("all")


def test_the_first_example_s_own_mask_is_drawn():
    images, masks, scores = _call()
    figure = plot_segment_scores(images[0], masks[0, 0], {"CTC": scores})
    painted = np.ma.filled(figure.axes[1].images[1].get_array().astype(float), np.nan)
    np.testing.assert_allclose(painted, scores.scores[0][masks[0, 0]].numpy(), rtol=1e-6)
    plt.close("all")
