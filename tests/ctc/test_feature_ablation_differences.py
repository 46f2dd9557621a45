"""CTC beside Captum's FeatureAblation: every deliberate difference is documented and holds.

``docs/inputs.md`` lists where ``CTC.attribute`` differs from ``FeatureAblation.attribute``; each
test here checks one row of that table against both methods, so a difference the page does not
name (or a row that is no longer true) fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from captum.attr import FeatureAblation
from torch import nn

from ctc_plugin import CTC, UnsupportedOperationError
from ctc_plugin.testing import RandomCNN, random_partition

PAGE = Path(__file__).resolve().parents[2] / "docs" / "inputs.md"
SECTION = "## Where CTC differs from Captum's FeatureAblation"


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return RandomCNN(seed=0).double()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def documented_rows() -> list[str]:
    """The first cell of every row of the differences table."""
    text = PAGE.read_text(encoding="utf-8")
    assert SECTION in text, f"{PAGE.name} has no section {SECTION!r}"
    table = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    return [re.split(r"\s*\|\s*", row)[1] for row in rows[1:]]


@pytest.mark.parametrize(
    "row",
    [
        "argument order",
        "`target=None`",
        "`baselines`",
        "`feature_mask` ids",
        "one `feature_mask` tensor for a tuple of inputs",
        "`feature_mask=None`",
        "`perturbations_per_eval`",
        "a forward function returning one number for the whole batch",
        "`show_progress=True`",
        "`return_convergence_delta`",
    ],
)
def test_the_page_names_the_difference(row: str) -> None:
    assert row in documented_rows()


def test_positional_baselines_are_refused(model, images) -> None:
    mask = random_partition(8, 8, 4)
    assert FeatureAblation(model).attribute(images, 0.0, 1, feature_mask=mask).shape == images.shape
    with pytest.raises(TypeError, match="positional"):
        CTC(model).attribute(images, 0.0, 1)


def test_target_none_is_the_predicted_class(model, images) -> None:
    mask = random_partition(8, 8, 4)
    predicted = model(images).argmax(1)
    ctc = CTC(model)
    torch.testing.assert_close(
        ctc.attribute(images, None, feature_mask=mask),
        ctc.attribute(images, predicted, feature_mask=mask),
    )
    one_value = CTC(lambda x: model(x)[:, 2])
    _, scores = one_value.attribute(images, None, feature_mask=mask, return_feature_scores=True)
    torch.testing.assert_close(scores.scores.sum(1), model(images)[:, 2].detach())


def test_negative_and_float_feature_ids_are_refused(model, images) -> None:
    mask = random_partition(8, 8, 4) - 2  # ids -1, 2, 5, 8
    fa = FeatureAblation(model)
    assert fa.attribute(images, target=1, feature_mask=mask).shape == images.shape
    assert fa.attribute(images, target=1, feature_mask=mask.double()).shape == images.shape
    with pytest.raises(ValueError, match="negative ids"):
        CTC(model).attribute(images, 1, feature_mask=mask)
    with pytest.raises(ValueError, match=r"integer feature ids.*\.long\(\)"):
        CTC(model).attribute(images, 1, feature_mask=(mask + 2).double())


def test_non_finite_baselines_are_refused(model, images) -> None:
    mask = random_partition(8, 8, 4)
    assert (
        FeatureAblation(model)
        .attribute(images, target=1, feature_mask=mask, baselines=float("nan"))
        .isnan()
        .any()
    )
    with pytest.raises(ValueError, match="NaN or infinite"):
        CTC(model).attribute(images, 1, feature_mask=mask, baselines=float("nan"))


class _Sum(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a.sum(1, keepdim=True) + b.sum(1, keepdim=True)).repeat(1, 2)


def test_one_mask_for_a_tuple_of_inputs_is_refused() -> None:
    inputs = (torch.ones(1, 4), torch.ones(1, 3))
    mask = torch.tensor([[0, 0, 1, 1]])
    _, second = FeatureAblation(_Sum()).attribute(inputs, target=0, feature_mask=mask)
    assert not second.any()  # FeatureAblation leaves the second input out
    with pytest.raises(ValueError, match="one mask per input"):
        CTC(_Sum()).attribute(inputs, 0, feature_mask=mask)


def test_proportional_sharing_refuses_fewer_perturbations_per_eval(model, images) -> None:
    mask = random_partition(8, 8, 4)
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        CTC(model, bias_sharing="proportional").attribute(
            images, 1, feature_mask=mask, perturbations_per_eval=1
        )


def test_an_output_for_the_whole_batch_is_refused(model, images) -> None:
    mask = random_partition(8, 8, 4)
    total = lambda x: model(x)[:, 1].sum()  # noqa: E731
    assert FeatureAblation(total).attribute(images, feature_mask=mask).shape == (1, 3, 8, 8)
    with pytest.raises(UnsupportedOperationError, match="batch"):
        CTC(total).attribute(images, None, feature_mask=mask)


def test_ctc_returns_a_convergence_delta_and_feature_ablation_none(model, images) -> None:
    mask = random_partition(8, 8, 4)
    fa = FeatureAblation(model)
    assert fa.has_convergence_delta() is False
    only = fa.attribute(images, target=1, feature_mask=mask, return_convergence_delta=True)
    assert isinstance(only, torch.Tensor)  # taken among its **kwargs, and no delta returned
    ctc = CTC(model)
    assert ctc.has_convergence_delta() is True
    attributions, delta = ctc.attribute(images, 1, feature_mask=mask, return_convergence_delta=True)
    assert torch.equal(attributions, ctc.attribute(images, 1, feature_mask=mask))
    assert delta.shape == (2,) and delta.abs().max() < 1e-10  # proportional: complete
    output = model(images)[:, 1]
    _, scores, again = ctc.attribute(
        images, 1, feature_mask=mask, return_feature_scores=True, return_convergence_delta=True
    )
    torch.testing.assert_close(again, scores.scores.sum(1) - output, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bias_sharing", ["reference", "none"])
def test_the_delta_is_the_part_of_the_output_the_scores_miss(model, images, bias_sharing) -> None:
    mask = random_partition(8, 8, 4)
    baselines = torch.full_like(images, 0.25)
    _, scores, delta = CTC(model, bias_sharing=bias_sharing).attribute(
        images, 1, feature_mask=mask, baselines=baselines, return_feature_scores=True,
        return_convergence_delta=True,
    )  # fmt: skip
    expected = scores.scores.sum(1) + scores.baseline - model(images)[:, 1]
    torch.testing.assert_close(delta, expected, rtol=0, atol=1e-12)
    assert delta.abs().min() > 1e-6  # the biases' part ("none"), the quantisation ("reference")


def test_noise_tunnel_returns_one_delta_per_noisy_sample(model, images) -> None:
    from captum.attr import NoiseTunnel

    mask = random_partition(8, 8, 4)
    tunnel = NoiseTunnel(CTC(model))
    attributions, delta = tunnel.attribute(
        images, nt_samples=3, stdevs=0.1, target=1, feature_mask=mask,
        return_convergence_delta=True,
    )  # fmt: skip
    assert attributions.shape == images.shape
    assert delta.shape == (2 * 3,) and delta.abs().max() < 1e-10


def test_the_delta_is_not_recomputed_from_the_maps_and_says_where_it_is(model, images) -> None:
    """Captum's contract pairs has_convergence_delta() with compute_convergence_delta; CTC's
    maps repeat each score on the feature's pixels, so the delta comes with the call."""
    attributions = CTC(model).attribute(images, 1, feature_mask=random_partition(8, 8, 4))
    with pytest.raises(NotImplementedError, match="return_convergence_delta=True"):
        CTC(model).compute_convergence_delta(attributions, images, images, target=1)


def test_wrappers_that_perturb_the_images_are_told_to_give_the_clean_mask(model, images) -> None:
    from captum.attr import NoiseTunnel

    from ctc_plugin.features import ValueRangeError

    with pytest.raises(ValueRangeError, match="segment the clean images once and pass"):
        NoiseTunnel(CTC(model)).attribute(images.clamp(0, 1), nt_samples=2, stdevs=0.5, target=1)


def test_a_segmenter_ctc_made_itself_is_named_with_how_to_give_one(model) -> None:
    """Normalised images without segmenter= or feature_mask=: the error was about a
    segmenter "told value_range=(0.0, 1.0)" that the user never made or configured."""
    from ctc_plugin.features import SuperpixelSegmenter, ValueRangeError

    normalised = (torch.rand(1, 3, 8, 8, dtype=torch.float64) - 0.45) / 0.225
    with pytest.raises(ValueRangeError, match=r"CTC made that segmenter itself.*mean=\.\.\."):
        CTC(model).attribute(normalised, 1)
    own = CTC(model, segmenter=SuperpixelSegmenter())
    with pytest.raises(ValueRangeError) as error:
        own.attribute(normalised, 1)
    assert "CTC made that segmenter itself" not in str(error.value)
    ctc = CTC(model, segmenter=SuperpixelSegmenter(mean=(0.45,) * 3, std=(0.225,) * 3))
    ctc.attribute(normalised, 1)


def test_images_a_little_past_the_range_are_told_to_clamp_not_to_declare_8_bit(model) -> None:
    """Bicubic-resized [0, 1] images (about [-0.07, 1.13]) without segmenter=: CTC's note on
    the segmenter it made advised value_range=(0, 255), which makes such images black."""
    import pickle

    from ctc_plugin.features import ValueRangeError

    images = torch.rand(1, 3, 8, 8, dtype=torch.float64) * 1.1 - 0.05
    with pytest.raises(ValueRangeError) as error:
        CTC(model).attribute(images, 1)
    message = str(error.value)
    assert "CTC made that segmenter itself" in message and "clamp the images as said" in message
    assert "value_range=(0, 255)" not in message
    assert error.value.overshoot and pickle.loads(pickle.dumps(error.value)).overshoot
