"""CTCAttributor returns the whole batch's output and weights it as Zennit does, however many
features there are.

On a CPU, ``CTC`` explains a batch in groups of examples when the copies of all its features
would not fit one pass (``Speedups.copies_per_pass``). The attributor's weighting
(``attr_output``) is a function of the model's whole output, as in Zennit, and its call
returns that whole output: a batch with many features (superpixels give dozens) must give the
same output, weighting and relevance as a batch with few.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin import CTC, CTCAttributor, CTCComposite
from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition

MODES = ["proportional", "reference", "none"]


@pytest.fixture(scope="module")
def model():
    return RandomCNN(CNNSpec(residual=True), seed=1).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))


MASK = random_partition(8, 8, 40, seed=2)  # 41 copies per example: one example per CPU pass


@pytest.mark.parametrize("mode", MODES)
def test_the_predicted_class_of_every_example_is_scored(model, images, mode) -> None:
    attributor = CTCAttributor(model, CTCComposite(bias_sharing=mode), feature_mask=MASK)
    output, relevance = attributor(images)
    expected = model(images).detach()
    torch.testing.assert_close(output, expected)
    predicted = expected.argmax(dim=1)
    assert attributor.feature_scores.target.tolist() == predicted.tolist()
    ctc = CTC(model, bias_sharing=mode)
    torch.testing.assert_close(relevance, ctc.attribute(images, predicted, feature_mask=MASK))


@pytest.mark.parametrize("mode", MODES)
def test_a_weighting_with_one_row_per_example_is_taken(model, images, mode) -> None:
    classes = torch.tensor([0, 1, 2, 3, 0, 1])
    attributor = CTCAttributor(model, CTCComposite(bias_sharing=mode), feature_mask=MASK)
    output, relevance = attributor(images, torch.eye(4)[classes])
    assert output.shape == (6, 4)
    assert attributor.feature_scores.target.tolist() == classes.tolist()
    ctc = CTC(model, bias_sharing=mode)
    torch.testing.assert_close(relevance, ctc.attribute(images, classes, feature_mask=MASK))
