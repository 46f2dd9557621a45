"""CTCAttributor segments before it registers its composite, so a segmenter may take gradients.

A segmenter that reads the model's gradient (relevance-guided features, a CAM) ran while the
attributor's composite was registered, and its backward pass met the composite's rules
(`CompositeOutsideAttributorError`, whose advice was to use the attributor already in use). A
call now makes the mask first; inside a ``with`` block, where the composite is registered for
the whole block, the error says to make the mask before the block.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin import CTC, CTCAttributor, CTCComposite
from ctc_plugin.features import GridSegmenter
from ctc_plugin.testing import CNNSpec, RandomCNN


@pytest.fixture(scope="module")
def model():
    return RandomCNN(CNNSpec(residual=True), seed=1).eval()


def _gradient_segmenter(model):
    grid = GridSegmenter(cells=2)

    def segment(images: torch.Tensor) -> torch.Tensor:
        leaf = images.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)
        return grid(images) * 2 + (gradient.sum(1, keepdim=True) > 0).long()

    return segment


def test_a_call_segments_with_gradients_before_registering(model):
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    segmenter = _gradient_segmenter(model)
    attributor = CTCAttributor(model, CTCComposite(), segmenter=segmenter)
    _, relevance = attributor(images, torch.eye(4)[[1, 2]])
    expected = CTC(model, segmenter=segmenter).attribute(images, torch.tensor([1, 2]))
    torch.testing.assert_close(relevance, expected)
    assert torch.equal(attributor.feature_scores.feature_mask[0], segmenter(images))


def test_inside_a_with_block_the_error_says_to_make_the_mask_first(model):
    images = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    segmenter = _gradient_segmenter(model)
    mask = segmenter(images)  # before the block, as the error says
    with CTCAttributor(model, CTCComposite(), segmenter=segmenter) as attributor:
        with pytest.raises(RuntimeError, match="make the feature mask before the block"):
            attributor(images)
        _, relevance = attributor(images, feature_mask=mask)
    assert relevance.shape == images.shape
