import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ctc_plugin.evaluation.faithfulness import perturbation_curve, resolve_baseline


class Linear(nn.Module):
    """logit_0 = sum(w * x); logit_1 = 0."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        first = (x * self.weight).flatten(1).sum(1, keepdim=True)
        return torch.cat([first, torch.zeros_like(first)], dim=1)


def naive_pixel_curve(weight, image, relevance, steps, baseline, mode, descending):
    order = np.argsort(-relevance.ravel() if descending else relevance.ravel(), kind="stable")
    contributions_image = (weight * image).sum(0).ravel()
    contributions_base = (weight * baseline).sum(0).ravel()
    p = relevance.size
    out = []
    for s in range(steps + 1):
        k = int(round(s * p / steps))
        moved = np.zeros(p, dtype=bool)
        moved[order[:k]] = True
        if mode == "deletion":
            out.append(np.where(moved, contributions_base, contributions_image).sum())
        else:
            out.append(np.where(moved, contributions_image, contributions_base).sum())
    return np.array(out)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    mode=st.sampled_from(["deletion", "insertion"]),
    order=st.sampled_from(["morf", "lerf"]),
    steps=st.integers(1, 12),
    baseline=st.floats(-1.0, 1.0),
)
def test_pixel_curve_matches_naive(seed, mode, order, steps, baseline):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64)
    images = torch.rand(2, 2, 4, 5, generator=g, dtype=torch.float64)
    relevance = torch.rand(2, 1, 4, 5, generator=g, dtype=torch.float64)  # distinct: no ties
    curve = perturbation_curve(
        Linear(weight),
        images,
        0,
        relevance,
        mode,
        order,
        baseline=baseline,
        steps=steps,
        output="logit",
    )
    for i in range(2):
        expected = naive_pixel_curve(
            weight[0].numpy(),
            images[i].numpy(),
            relevance[i, 0].numpy(),
            steps,
            np.full_like(images[i].numpy(), baseline),
            mode,
            order == "morf",
        )
        np.testing.assert_allclose(curve.scores[i].numpy(), expected, rtol=1e-9, atol=1e-9)
    moved = [round(s * 20 / steps) / 20 for s in range(steps + 1)]  # 4 x 5 pixels
    np.testing.assert_allclose(curve.fractions.numpy(), moved)


@pytest.mark.parametrize(("size", "steps"), [((3, 3), 20), ((3, 5), 4), ((5, 7), 6)])
def test_fractions_are_the_area_moved(size, steps):
    """Where ``steps`` does not divide the pixels the x axis is the area actually moved: with
    every pixel worth 1 and a baseline of 0, the logit after deletion is the pixels kept."""
    weight = torch.ones(1, 1, *size, dtype=torch.float64)
    relevance = torch.rand(1, 1, *size, generator=torch.Generator().manual_seed(1))
    curve = perturbation_curve(
        Linear(weight), torch.ones(1, 1, *size, dtype=torch.float64), 0, relevance,
        "deletion", "morf", steps=steps, output="logit",
    )  # fmt: skip
    pixels = size[0] * size[1]
    np.testing.assert_allclose(curve.fractions.numpy(), 1 - curve.scores[0].numpy() / pixels)
    assert curve.fractions[0] == 0 and curve.fractions[-1] == 1


@pytest.mark.parametrize("segments", [False, True])
@pytest.mark.parametrize(("size", "steps"), [((8, 8), 10), ((3, 5), 5), ((5, 7), 9)])
def test_lerf_deletion_mirrors_morf_insertion_with_ties(segments, size, steps):
    """LeRF deletion keeps what MoRF insertion reveals, also where relevances tie (a
    piecewise-constant map of 2 x 2 blocks, the kind segment methods give)."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(1, 2, *size, generator=g, dtype=torch.float64)
    images = torch.rand(2, 2, *size, generator=g, dtype=torch.float64)
    blocks = torch.randint(0, 3, (2, 1, -(-size[0] // 2), -(-size[1] // 2)), generator=g)
    relevance = blocks.repeat_interleave(2, 2).repeat_interleave(2, 3)[..., : size[0], : size[1]]
    rows, cols = torch.arange(size[0]) // 2, torch.arange(size[1]) // 3
    mask = (rows[:, None] * 10 + cols[None, :])[None, None] if segments else None
    common = {"feature_mask": mask, "steps": steps, "output": "logit"}
    lerf = perturbation_curve(
        Linear(weight), images, 0, relevance.double(), "deletion", "lerf", **common
    )
    morf = perturbation_curve(
        Linear(weight), images, 0, relevance.double(), "insertion", "morf", **common
    )
    np.testing.assert_allclose(lerf.scores.numpy(), morf.scores.flip(1).numpy(), atol=1e-9)


def test_segment_curve_hand_made():
    # four quadrant features with known contributions 4, 3, 2, 1 (via the weights)
    weight = torch.zeros(1, 1, 4, 4)
    weight[..., :2, :2], weight[..., :2, 2:], weight[..., 2:, :2], weight[..., 2:, 2:] = (
        1.0,
        0.75,
        0.5,
        0.25,
    )
    image = torch.ones(1, 1, 4, 4)
    features = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])[None, None]
    relevance = weight[0] * image[0]  # exact relevance
    curve = perturbation_curve(
        Linear(weight),
        image,
        0,
        relevance,
        "deletion",
        "morf",
        feature_mask=features,
        steps=4,
        output="logit",
    )
    np.testing.assert_allclose(curve.scores[0].numpy(), [10, 6, 3, 1, 0])
    assert curve.auc().item() == pytest.approx(np.trapezoid([10, 6, 3, 1, 0], dx=0.25))
    lerf = perturbation_curve(
        Linear(weight),
        image,
        0,
        relevance,
        "deletion",
        "lerf",
        feature_mask=features,
        steps=4,
        output="logit",
    )
    np.testing.assert_allclose(lerf.scores[0].numpy(), [10, 9, 7, 4, 0])
    insertion = perturbation_curve(
        Linear(weight),
        image,
        0,
        relevance,
        "insertion",
        "morf",
        feature_mask=features,
        steps=8,
        output="logit",
    )
    # measured at 0, .25, .5, .75, 1 and linearly interpolated in between
    np.testing.assert_allclose(insertion.scores[0].numpy(), [0, 2, 4, 5.5, 7, 8, 9, 9.5, 10])


def test_probability_output_and_good_beats_bad():
    weight = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    images = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    model = Linear(weight)
    good = (weight * images).sum(1, keepdim=True)
    bad = -good
    kwargs = {"mode": "deletion", "order": "morf", "steps": 10}
    good_auc = perturbation_curve(model, images, 0, good, **kwargs).auc()
    bad_auc = perturbation_curve(model, images, 0, bad, **kwargs).auc()
    assert (good_auc < bad_auc).all()
    curve = perturbation_curve(model, images, 0, good, **kwargs)
    assert ((curve.scores >= 0) & (curve.scores <= 1)).all()


def test_a_model_that_outputs_probabilities_is_refused_for_probability_curves():
    weight = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    images = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    probabilities = nn.Sequential(Linear(weight), nn.Softmax(dim=1))
    maps = (weight * images).sum(1)
    with pytest.raises(ValueError, match=r"already probabilities .* output='logit'"):
        perturbation_curve(probabilities, images, 0, maps, steps=4)
    # read as it is, the curve is the logits' softmax, the probability curve of the logits
    as_is = perturbation_curve(probabilities, images, 0, maps, steps=4, output="logit")
    of_logits = perturbation_curve(Linear(weight), images, 0, maps, steps=4)
    torch.testing.assert_close(as_is.scores, of_logits.scores)


def test_a_model_with_one_output_is_refused_for_probability_curves():
    """The softmax of a single logit is 1 whatever the image: every curve was flat at 1 and
    every method's AUC 1, silently."""
    weight = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    images = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))

    class OneLogit(nn.Module):
        def forward(self, x):
            return (x * weight).flatten(1).sum(1, keepdim=True)

    maps = (weight * images).sum(1)
    with pytest.raises(ValueError, match=r"has one output.*output='logit'"):
        perturbation_curve(OneLogit(), images, 0, maps, steps=4)
    logit = perturbation_curve(OneLogit(), images, 0, maps, steps=4, output="logit")
    torch.testing.assert_close(logit.scores[:, 0], OneLogit()(images)[:, 0].double())
    assert (logit.scores[:, -1] == 0).all()


def test_callable_and_tensor_baselines():
    images = torch.rand(2, 3, 4, 4)
    assert torch.equal(
        resolve_baseline(lambda x: x * 0 + 0.5, images), torch.full_like(images, 0.5)
    )
    per_channel = torch.tensor([0.1, 0.2, 0.3])[:, None, None]
    assert resolve_baseline(per_channel, images)[1, 2, 3, 3].item() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="does not broadcast"):
        resolve_baseline(torch.zeros(5, 4, 4), images)


def test_bad_arguments():
    model = Linear(torch.ones(1, 1, 3, 3))
    images = torch.rand(1, 1, 3, 3)
    with pytest.raises(ValueError, match="attributions must match"):
        perturbation_curve(model, images, 0, torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="mode must be"):
        perturbation_curve(model, images, 0, torch.rand(1, 1, 3, 3), mode="removal")
    with pytest.raises(ValueError, match="feature_mask must have shape"):
        perturbation_curve(model, images, 0, torch.rand(1, 1, 3, 3), feature_mask=torch.zeros(3, 3))
    maps = torch.rand(1, 1, 3, 3)
    with pytest.raises(ValueError, match="integer feature ids"):
        perturbation_curve(model, images, 0, maps, feature_mask=torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"target 7 .* out of range: the model has 2 classes"):
        perturbation_curve(model, images, 7, maps)
    with pytest.raises(ValueError, match="steps must be an integer"):
        perturbation_curve(model, images, 0, maps, steps=2.5)
    with pytest.raises(ValueError, match="seed must be an integer"):
        perturbation_curve(model, images, 0, maps, seed=None)
    with pytest.raises(ValueError, match="baseline holds NaN"):
        perturbation_curve(model, images, 0, maps, baseline=float("nan"))


@pytest.mark.parametrize("segments", [False, True])
def test_tied_curve_does_not_depend_on_the_other_images_in_the_call(segments):
    """Ties are broken by a generator per image: an image's curve is the same alone, after
    other images, or in another order (the benchmark scores images batch by batch)."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(1, 1, 6, 6, generator=g, dtype=torch.float64)
    images = torch.rand(3, 1, 6, 6, generator=g, dtype=torch.float64)
    maps = torch.zeros(3, 1, 6, 6, dtype=torch.float64)  # every pixel and feature ties
    mask = (torch.arange(36).view(1, 1, 6, 6) // 4) if segments else None
    common = {"feature_mask": mask, "steps": 6, "output": "logit"}
    batch = perturbation_curve(Linear(weight), images, 0, maps, **common).scores
    for i in range(3):
        alone = perturbation_curve(Linear(weight), images[i : i + 1], 0, maps[i : i + 1], **common)
        np.testing.assert_allclose(alone.scores[0].numpy(), batch[i].numpy())
    flipped = perturbation_curve(Linear(weight), images.flip(0), 0, maps, **common).scores
    np.testing.assert_allclose(flipped.flip(0).numpy(), batch.numpy())


def test_feature_mask_of_another_size_is_a_clear_error():
    model = Linear(torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(1, 1, H, W\) = \(1, 1, 8, 8\).*got \(1, 1, 4, 4\)"):
        perturbation_curve(
            model, torch.rand(2, 1, 8, 8), 0, torch.rand(2, 8, 8),
            feature_mask=torch.zeros(1, 1, 4, 4, dtype=torch.long),
        )  # fmt: skip


def test_numpy_number_baseline():
    images = torch.rand(1, 3, 4, 4)
    assert torch.equal(resolve_baseline(np.float32(0.25), images), torch.full_like(images, 0.25))


@pytest.mark.parametrize("pixels", [9, 15, 35, 64])
@pytest.mark.parametrize("steps", [2, 4, 5, 6, 9, 10])
def test_the_pixel_counts_of_the_steps_are_symmetric(pixels, steps):
    """``counts[k] + counts[steps - k] == pixels``, so LeRF deletion mirrors MoRF insertion.

    Half-pixel steps (an odd pixel count, an even step count) are where rounding half to even
    would break it; the middle step of an odd count is the one exception.
    """
    from ctc_plugin.evaluation.faithfulness import _pixel_counts

    counts = _pixel_counts(pixels, steps)
    assert counts[0] == 0 and counts[-1] == pixels
    for k in range(steps + 1):
        if 2 * k == steps and pixels % 2:
            continue
        assert counts[k] + counts[steps - k] == pixels, (k, counts.tolist())
