"""A 3-d mask for as many examples as channels is read per channel, with a warning.

Three label maps of three RGB images stacked, ``(3, H, W)``, broadcast as one map per channel
(Captum's reading, which CTC keeps): example 1's red channel took example 0's map, silently.
The warning names both readings and how to give each unambiguously.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from ctc_plugin import CTC
from ctc_plugin.testing import RandomCNN, random_partition


def _maps() -> torch.Tensor:
    return torch.stack([random_partition(8, 8, 3, seed=s)[0, 0] for s in range(3)])


def test_three_stacked_label_maps_of_three_images_warn_with_both_readings():
    x, model = torch.rand(3, 3, 8, 8), RandomCNN(seed=0)
    with pytest.warns(UserWarning, match=r"one map per channel.*unsqueeze\(1\).*unsqueeze\(0\)"):
        ambiguous = CTC(model).attribute(x, 1, feature_mask=_maps())
    torch.testing.assert_close(
        ambiguous, CTC(model).attribute(x, 1, feature_mask=_maps().unsqueeze(0))
    )


@pytest.mark.parametrize("shape", ["(N, 1, H, W)", "(1, C, H, W)", "(C, H, W) of 2 examples"])
def test_unambiguous_masks_warn_nothing(shape):
    x, maps = torch.rand(3, 3, 8, 8), _maps()
    mask = {"(N, 1, H, W)": maps.unsqueeze(1), "(1, C, H, W)": maps.unsqueeze(0)}.get(shape)
    if mask is None:
        x, mask = x[:2], maps
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CTC(RandomCNN(seed=0)).attribute(x, 1, feature_mask=mask)
