"""Zero regions of the input through the sparse pass: wide maps, batches, small blocks.

``test_images_with_zero_regions.py`` holds one square letterboxed image to the spec. Here the
same kind of case in forms it leaves out, each of which a slip in the boxes the pass carries
after a bias would break (the gate copy's box becomes the whole map, and ``"proportional"``
widens every copy's box over the units where all sharing copies were zero):

- maps that are not square (a box of the whole map has its rows and columns the right way);
- two examples in one pass with zero regions in different places (the boxes of each example
  are widened by its own units);
- the fused ``"proportional"`` sharing in blocks of a few channels (the units of every block);
- the spec's bias sharing with sparse convolutions (the gate copy and the full copy of
  ``"reference"`` are nonzero outside their boxes after a bias);
- two examples whose copies have boxes of different sizes (the fused ``"reference"`` packs
  each example's copies on that example's carried boxes).

Held to the dense spec pass in float64 (1e-9 of the largest score).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from ctc_plugin.ctc.speedups import DEFAULT

from .test_sparse import SPARSE_ONLY as SPEC_SHARING
from .test_speedups import MODES, assert_same_as_spec

#: The default speed-ups, every convolution sparse; ``"none"`` through the pass of copies.
EVERYWHERE = replace(DEFAULT, sparse_dense_above=1.0, gradient_shortcut=False)


#: As `EVERYWHERE`, the fused sharing in blocks of a few values (one channel at a time).
SMALL_BLOCKS = replace(EVERYWHERE, block_elements=64, packed_boxes=0.0)

SPEEDUPS = {"default": DEFAULT, "sparse": EVERYWHERE, "spec sharing": SPEC_SHARING}


def _model(batch_norm: bool) -> nn.Module:
    """Three 3x3 convolutions with ReLUs (biased, or bias-free and an eval-mode BatchNorm),
    the second depthwise (its channels are zero in different places: a channel whose ReLU is
    closed over the zero region stays zero there), a max pooling after it, an average pooling
    and a linear head."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for index, channels in enumerate((3, 5, 5)):
        groups = 5 if index == 1 else 1
        layers.append(nn.Conv2d(channels, 5, 3, padding=1, groups=groups, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(5))
        layers.append(nn.ReLU())
        if index == 1:
            layers.append(nn.MaxPool2d(2))
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))
    norms = [module for module in model if isinstance(module, nn.BatchNorm2d)]
    with torch.no_grad():  # biases and shifts large enough to matter against the signal
        for module in model:
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.0)  # mostly open over the zero region
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
            if getattr(module, "bias", None) is not None:
                module.bias.uniform_(-0.5, 0.5)
        if norms:  # the first shift opens channels 0 and 1 over the zero region, closes 2-4
            norms[0].running_mean.copy_(torch.tensor([-0.3, -0.2, 0.3, 0.2, 0.25]))
            norms[0].bias.zero_()
    return model.eval().double()


def _grid(height: int, width: int, cells: int) -> torch.Tensor:
    """A cells x cells grid of features on a height x width map."""
    rows, columns = torch.arange(height) * cells // height, torch.arange(width) * cells // width
    return (rows.view(-1, 1) * cells + columns.view(1, -1)).view(1, 1, height, width)


def _image(height: int, width: int, seed: int, rows: slice, columns: slice) -> torch.Tensor:
    """A (1, 3, height, width) image, zero outside ``rows`` x ``columns``."""
    x = torch.zeros(1, 3, height, width, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    x[..., rows, columns] = torch.rand(x[..., rows, columns].shape, generator=generator).double()
    return x


@pytest.mark.parametrize("speedups", SPEEDUPS, ids=list(SPEEDUPS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_norm", [False, True], ids=["biased", "batch norm"])
@pytest.mark.parametrize("size", [(12, 28), (28, 12)], ids=["wide", "tall"])
def test_a_zero_border_of_a_map_that_is_not_square(size, batch_norm, mode, speedups):
    """The image is zero outside a small window, so the gate copy's box (before the first
    bias) is that window, and after it the whole map, of ``size``."""
    height, width = size
    x = _image(height, width, 1, slice(4, 8), slice(4, 8))
    model = _model(batch_norm)
    assert_same_as_spec(model, x, _grid(height, width, 3), 2, mode, SPEEDUPS[speedups])


@pytest.mark.parametrize("speedups", [EVERYWHERE, SMALL_BLOCKS], ids=["sparse", "small blocks"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_norm", [False, True], ids=["biased", "batch norm"])
def test_two_examples_with_zero_regions_in_different_places(batch_norm, mode, speedups):
    """The first image is zero on its right part, the second on its lower part: each example's
    copies are widened over its own zero units (where ``"proportional"`` splits biases
    equally), in one pass and in channel blocks of the fused sharing. (A biased convolution's
    result carries no boxes, the next convolution scans it; a BatchNorm's shift is shared on
    the carried boxes.)"""
    x = torch.cat(
        [
            _image(16, 16, 2, slice(None), slice(0, 5)),
            _image(16, 16, 3, slice(0, 5), slice(None)),
        ]
    )
    model = _model(batch_norm)
    targets = torch.tensor([1, 3])
    assert_same_as_spec(model, x, _grid(16, 16, 4), targets, mode, speedups)


@pytest.mark.parametrize("speedups", [DEFAULT, EVERYWHERE], ids=["default", "sparse"])
@pytest.mark.parametrize("mode", MODES)
def test_two_examples_whose_copies_have_boxes_of_different_sizes(mode, speedups):
    """A zero column of one pixel inside the first image (its neighbours keep every output of
    the full copy nonzero, so ``"reference"`` packs the copies' boxes): the features left of
    it have smaller boxes in the first example than in the second, and each example's shares
    are computed on its own boxes."""
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)).double()
    x[0, :, :, 3] = 0.0
    model = _model(batch_norm=True)
    assert_same_as_spec(model, x, _grid(16, 16, 4), torch.tensor([1, 3]), mode, speedups)
