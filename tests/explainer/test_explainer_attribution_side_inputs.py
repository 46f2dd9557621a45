"""``ExplainerAttribution`` with a classifier that takes a per-example side input.

Before, a call with an explicit target checked the classifier's class count on the first image
alone but passed the side input of every example, so a classifier that concatenates it failed
inside with torch's "Sizes of tensors must match".
"""

from __future__ import annotations

import torch
from torch import nn

from ctc_plugin import ExplainerAttribution

from .helpers import NUM_CLASSES, data, tiny_explainer


class WithSideInput(nn.Module):
    """Pools the image and concatenates a (N, 2) side input before the linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(3 + 2, NUM_CLASSES)
        self.rows_seen: list[int] = []

    def forward(self, images: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        self.rows_seen.append(len(images))
        return self.head(torch.cat([images.mean(dim=(2, 3)), side], dim=1))


def test_a_side_input_per_example_is_taken_with_and_without_target():
    images, _ = data(4)
    side = torch.randn(4, 2)
    explainer = tiny_explainer()
    explainer.trained_steps.fill_(1)  # its masks are not the point here
    classifier = WithSideInput().eval()
    for target in (1, None):
        masks = ExplainerAttribution(classifier, explainer).attribute(
            images, target=target, additional_forward_args=(side,)
        )
        assert masks.shape == images.shape
    # with a target, the class count is checked on one example (and its side input's row);
    # without one, the whole batch is classified for its predicted classes
    assert classifier.rows_seen == [1, 4]
