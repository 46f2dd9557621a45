"""A Captum user's misplaced arguments get the form that works, not a hint for another mistake."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC, IntegrativeCAM
from ctc_plugin.testing import CNNSpec, RandomCNN


class _ImagesAndValues(nn.Module):
    """Two inputs: images and a per-example vector."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = RandomCNN(CNNSpec(), seed=0)

    def forward(self, images: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return self.cnn(images) + values.sum(dim=1, keepdim=True)


def test_integer_masks_in_a_list_for_two_inputs_are_told_to_be_a_tuple():
    x, values = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    mask = torch.arange(4).repeat_interleave(16).reshape(1, 1, 8, 8)
    model = lambda a, b: RandomCNN(CNNSpec(), seed=0)(a + b)  # noqa: E731
    with pytest.raises(ValueError, match=r"one integer mask per input as a tuple"):
        CTC(model).attribute((x, values), target=0, feature_mask=[mask, mask])
    with pytest.raises(ValueError) as boolean:  # boolean masks with two inputs: no such hint
        CTC(model).attribute((x, values), target=0, feature_mask=[mask[0, 0] == 1])
    assert "as a tuple" not in str(boolean.value)


def test_an_integer_mask_in_a_list_is_told_to_be_given_as_it_is():
    x = torch.rand(2, 3, 8, 8)
    mask = torch.arange(4).repeat_interleave(16).reshape(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"given as it is, not in a list"):
        CTC(RandomCNN(CNNSpec(), seed=0)).attribute(x, target=0, feature_mask=[mask])


def test_a_batch_of_values_before_the_images_is_not_told_to_add_dimensions():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError) as caught:
        IntegrativeCAM(_ImagesAndValues().eval()).attribute((torch.rand(2, 7), x), target=0)
    message = str(caught.value)
    assert "x[None, None]" not in message
    assert "give the images first, or pass the other values as additional_forward_args" in message
    # one 2-d tensor alone is still an image without its batch and channel dimensions
    with pytest.raises(ValueError, match=r"x\[None, None\]"):
        IntegrativeCAM(_ImagesAndValues().eval()).attribute(torch.rand(8, 8), target=0)


def test_a_zero_one_integer_mask_in_a_list_is_told_to_be_made_boolean():
    x = torch.rand(2, 3, 8, 8)
    binary = torch.zeros(8, 8, dtype=torch.uint8)
    binary[:4] = 1
    with pytest.raises(ValueError, match=r"make a 0/1 mask boolean with mask\.bool\(\)"):
        CTC(RandomCNN(CNNSpec(), seed=0)).attribute(x, target=0, feature_mask=[binary])
