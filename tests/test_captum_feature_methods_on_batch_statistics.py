"""Captum's feature methods on a model whose BatchNorm keeps no running statistics.

Such a BatchNorm normalises each batch with its own statistics, in eval mode too: several
perturbed copies (or images) in one forward pass change each other's outputs. The ``explain``
command ran its FeatureAblation and Lime with one copy per pass there; the benchmark's views of
the same calls (`ctc_plugin.method_calls`) did not, so their maps changed with the batch
(``perturbations_per_eval`` and the other images). The rule now lives with the calls.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import FeatureAblation
from torch import nn

from ctc_plugin import method_calls
from ctc_plugin.harness.methods import registry


class BatchStatisticsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4, track_running_stats=False)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))).mean((2, 3)))


@pytest.fixture(scope="module")
def setup():
    model = BatchStatisticsNet().eval()
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ids = torch.arange(2).repeat_interleave(4)
    mask = (ids[:, None] * 2 + ids[None, :])[None, None]  # 4 segments of 4x4
    return model, images, mask


def alone(model, images, target, mask):
    """Captum's FeatureAblation of each image alone, one copy per pass: what the model gives."""
    return torch.cat(
        [
            FeatureAblation(model).attribute(
                images[i : i + 1], target=int(target[i]), feature_mask=mask,
                perturbations_per_eval=1,
            )
            for i in range(len(images))
        ]
    )  # fmt: skip


@pytest.mark.parametrize("target", [[0, 1, 2], torch.tensor([0, 1, 2])], ids=["list", "tensor"])
def test_feature_ablation_explains_each_image_alone(setup, target):
    model, images, mask = setup
    got = method_calls.FEATURE_ABLATION.attribute(model, images, target, mask)
    torch.testing.assert_close(got, alone(model, images, [0, 1, 2], mask), rtol=0, atol=1e-6)


def test_one_target_for_every_image_and_a_mask_per_image(setup):
    model, images, mask = setup
    masks = mask.expand(3, 1, 8, 8)
    got = method_calls.FEATURE_ABLATION.attribute(model, images, 1, masks)
    torch.testing.assert_close(got, alone(model, images, [1, 1, 1], mask), rtol=0, atol=1e-6)


def test_the_benchmarks_feature_ablation_and_lime_do_not_depend_on_the_batch(setup):
    model, images, mask = setup
    methods = {name: spec.fn for name, spec in registry().items()}
    target = torch.tensor([0, 1, 2])
    batch = methods["FeatureAblation"](model, images, target, mask)
    torch.testing.assert_close(batch, alone(model, images, target, mask)[:, :1], rtol=0, atol=1e-6)
    lime = methods["Lime"](model, images, target, mask)
    first = methods["Lime"](model, images[:1], target[:1], mask)
    torch.testing.assert_close(lime[:1], first, rtol=0, atol=1e-6)


def test_a_model_that_keeps_statistics_still_gets_its_copies_batched(setup, monkeypatch):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.LazyLinear(3)).eval()  # fmt: skip
    _, images, mask = setup
    model(images)
    seen = []
    original = FeatureAblation.attribute

    def recording(self, inputs, **kwargs):
        seen.append((len(inputs), kwargs["perturbations_per_eval"]))
        return original(self, inputs, **kwargs)

    monkeypatch.setattr(FeatureAblation, "attribute", recording)
    method_calls.FEATURE_ABLATION.attribute(model, images, 0, mask)
    assert seen == [(3, method_calls.PERTURBATIONS_PER_EVAL)]


def test_one_copy_per_pass_still_explains_each_image_alone(setup):
    """With one copy per pass, Captum still sends every image of the batch in each pass (each
    with the same feature ablated), and such a BatchNorm mixes them: the images are explained
    one at a time there too (``perturbations_per_eval=1`` was taken for already alone)."""
    model, images, mask = setup
    one_copy = method_calls.FEATURE_ABLATION.but(perturbations_per_eval=1)
    got = one_copy.attribute(model, images, [0, 1, 2], mask)
    torch.testing.assert_close(got, alone(model, images, [0, 1, 2], mask), rtol=0, atol=1e-6)
