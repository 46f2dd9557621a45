"""Baselines of the wrong kind and tensors without values get messages that name them.

``baselines="0.5"`` failed inside torch (``new(): invalid data type 'str'``), ``0.5 + 1j`` lost
its imaginary part with only torch's ``ComplexWarning``, and a ``meta`` input or baseline failed
with ``Tensor.item() cannot be called on meta tensors`` / ``Cannot copy out of meta tensor``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.testing import CNNSpec, RandomCNN


def _model() -> nn.Module:
    return RandomCNN(CNNSpec(), seed=1).eval()


def _mask() -> torch.Tensor:
    return (torch.arange(16) // 8).view(1, 1, 1, 16).expand(1, 1, 16, 16)


@pytest.mark.parametrize(
    ("baseline", "said"),
    [
        ("0.5", r"baseline 0 must be a number or a tensor.*got str"),
        (0.5 + 1j, r"baseline 0 is complex"),
        (torch.full((1, 3, 16, 16), 0.5 + 0j), r"baseline 0 is complex"),
        (torch.zeros(1, 3, 16, 16, device="meta"), r"baseline 0 is on the meta device"),
        (object(), r"baseline 0 must be a number or a tensor.*got object"),
    ],
)
def test_a_baseline_of_the_wrong_kind_is_named(baseline, said):
    with pytest.raises((TypeError, ValueError), match=said):
        CTC(_model(), bias_sharing="reference").attribute(
            torch.rand(1, 3, 16, 16), 1, feature_mask=_mask(), baselines=baseline
        )


def test_a_baseline_that_is_a_number_or_an_array_still_works():
    import numpy as np

    x = torch.rand(1, 3, 16, 16)
    ctc = CTC(_model(), bias_sharing="reference")
    by_number = ctc.attribute(x, 1, feature_mask=_mask(), baselines=0.5)
    by_array = ctc.attribute(x, 1, feature_mask=_mask(), baselines=np.full((1, 3, 1, 1), 0.5))
    torch.testing.assert_close(by_number, by_array)


@pytest.mark.parametrize("which", ["inputs", "feature_mask"])
def test_a_meta_input_or_mask_is_named(which):
    x, mask = torch.rand(1, 3, 16, 16), _mask()
    if which == "inputs":
        x = x.to("meta")
    else:
        mask = mask.to("meta")
    with pytest.raises(ValueError, match=rf"{which}.* is on the meta device"):
        CTC(_model()).attribute(x, 1, feature_mask=mask)


@pytest.mark.parametrize(
    "made", [lambda x: torch.zeros(x.shape[0], 1, 16, 16), lambda x: torch.zeros(x.shape[0], 16)]
)
def test_a_segmenter_s_unusable_mask_is_blamed_on_the_segmenter(made):
    """The message said ``feature_mask 0 ...`` to a user who gave no feature_mask."""

    class Segmenter:
        def __call__(self, images: torch.Tensor) -> torch.Tensor:
            return made(images)

    with pytest.raises(ValueError, match=r"the segmenter \(Segmenter\) returned a mask"):
        CTC(_model(), segmenter=Segmenter()).attribute(torch.rand(2, 3, 16, 16), 1)
