"""``benchmarks/bench_sparse.py``'s feature masks: the grid, SLIC superpixels, SAM-style."""

from __future__ import annotations

import torch


def test_sam_style_features_are_a_background_around_superpixels(bench_sparse):
    torch.manual_seed(0)
    image = torch.rand(1, 3, 96, 96)
    mask = bench_sparse.sam_style_mask(image, 24)
    labels = mask.unique()
    assert mask.shape == (1, 1, 96, 96)
    assert labels.tolist() == list(range(len(labels)))  # numbered from 0, none missing
    background = mask[0, 0] == 0
    # the background is the largest segment, reaches every side and holds no centre
    sizes = torch.bincount(mask.flatten())
    assert int(sizes.argmax()) == 0 and sizes[0] > 0.4 * mask.numel()
    assert all(bool(side.any()) for side in (background[0], background[-1],
                                             background[:, 0], background[:, -1]))  # fmt: skip
    assert not bool(background[40:56, 40:56].all())
    # the superpixels inside are of SLIC's size, each of them far smaller than the background
    assert len(labels) > 10 and bool((sizes[1:] < sizes[0] / 10).all())
