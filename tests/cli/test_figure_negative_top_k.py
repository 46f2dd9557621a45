"""``plot_segment_scores(top_k=-1)`` is refused (slicing would write every rank but the last)."""

import pytest
import torch

from ctc_plugin.viz import plot_segment_scores


def test_negative_top_k_is_refused():
    mask = torch.arange(4).repeat_interleave(4).reshape(4, 4)
    with pytest.raises(ValueError, match="top_k"):
        plot_segment_scores(torch.rand(3, 4, 4), mask, {"s": [4.0, 3.0, 2.0, 1.0]}, top_k=-1)


def test_top_k_zero_writes_no_rank():
    import matplotlib.pyplot as plt

    mask = torch.arange(4).repeat_interleave(4).reshape(4, 4)
    figure = plot_segment_scores(torch.rand(3, 4, 4), mask, {"s": [4.0, 3.0, 2.0, 1.0]}, top_k=0)
    assert len(figure.axes[1].texts) == 0
    plt.close(figure)
