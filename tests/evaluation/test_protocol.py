import math

import numpy as np
import pytest
import torch
from torch import nn

from ctc_plugin.evaluation.protocol import (
    ProtocolResult,
    explanation_distance,
    normalise_explanations,
    run_protocol,
    welch_test,
)


def test_normalisation_is_per_explanation():
    maps = torch.stack([torch.ones(1, 2, 2), 100 * torch.ones(1, 2, 2)])
    out = normalise_explanations(maps)
    assert torch.allclose(out[0], out[1])  # scale of one map does not leak into another
    signed = torch.tensor([[[1.0, -1.0], [2.0, -2.0]]])
    assert normalise_explanations(signed).abs().sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="sums to zero"):
        normalise_explanations(signed, mode="sum")
    assert torch.equal(normalise_explanations(torch.zeros(1, 2, 2)), torch.zeros(1, 2, 2).double())


def test_distance_hand_made():
    a = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    b = torch.tensor([[[0.0, 0.0], [0.0, 3.0]]])
    assert explanation_distance(a, b).item() == pytest.approx(math.sqrt(2))
    assert explanation_distance(a, 5 * a).item() == pytest.approx(0.0)


def test_welch_matches_formula():
    rng = np.random.default_rng(0)
    kept, changed = rng.normal(0, 1, 30), rng.normal(1, 2, 12)
    results = [
        ProtocolResult("blur", "small", torch.tensor(kept), torch.ones(30, dtype=torch.bool)),
        ProtocolResult("uniform", "big", torch.tensor(changed), torch.zeros(12, dtype=torch.bool)),
    ]
    out = welch_test(results)
    va, vb = changed.var(ddof=1) / 12, kept.var(ddof=1) / 30
    assert out.statistic == pytest.approx((changed.mean() - kept.mean()) / math.sqrt(va + vb))
    assert (out.n_kept, out.n_changed) == (30, 12)
    empty = welch_test(results[:1])
    assert math.isnan(empty.statistic) and math.isnan(empty.mean_changed)


class Threshold(nn.Module):
    """Class 1 when the mean brightness is above 0.5."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))[:, None]
        return torch.cat([0.5 - m, m - 0.5], dim=1) * 100


def identity_method(model, images, targets, feature_mask):
    return images.mean(1, keepdim=True)


def test_protocol_groups_and_resegmentation():
    images = torch.cat([torch.full((2, 3, 8, 8), 0.2), torch.full((2, 3, 8, 8), 0.505)])
    calls = []

    def segmenter(x):
        calls.append(x.shape)
        return torch.zeros(len(x), 1, 8, 8, dtype=torch.long)

    results = run_protocol(
        identity_method,
        Threshold(),
        images,
        perturbations=[("blur", "small"), ("uniform", 0.3)],
        segmenter=segmenter,
    )
    assert len(results) == 2 and len(calls) == 2
    # blur keeps constant images constant: distance 0, prediction kept
    assert torch.allclose(results[0].distances, torch.zeros(4).double(), atol=1e-6)
    assert results[0].kept.all()
    # big uniform noise changes maps and flips some near-threshold images
    assert (results[1].distances > 0).all()


def test_protocol_rejects_wrong_method_output():
    with pytest.raises(ValueError, match="must return a tensor of shape"):
        run_protocol(lambda m, x, t, f: x, Threshold(), torch.rand(2, 3, 8, 8))


def test_protocol_rejects_an_unknown_perturbed_target():
    def method(model, images, targets, mask):
        raise AssertionError("nothing is explained before the arguments are checked")

    with pytest.raises(ValueError, match="perturbed_target must be 'predicted' or 'original'"):
        run_protocol(method, Threshold(), torch.rand(2, 3, 8, 8), perturbed_target="predict")


class Halves(nn.Module):
    """Class 0 reads the left half of the image, class 1 the right half."""

    def forward(self, x):
        w = x.shape[-1] // 2
        return 10 * torch.stack([x[..., :w].mean((1, 2, 3)), x[..., w:].mean((1, 2, 3))], 1)


def half_method(model, images, targets, feature_mask):
    """Explains class c by the half of the image that class reads."""
    out = torch.zeros(len(images), 1, *images.shape[2:])
    w = images.shape[-1] // 2
    for i, target in enumerate(targets.tolist()):
        columns = slice(None, w) if target == 0 else slice(w, None)
        out[i, 0, :, columns] = 1.0
    return out


def test_kept_image_is_explained_for_the_same_class_with_explicit_targets():
    """A misclassified image (target = true label 0, prediction 1) whose prediction survives
    the perturbation is in the kept group: both maps must explain class 0, not 0 and 1."""
    image = torch.full((1, 3, 8, 8), 0.3)
    image[..., 4:] = 0.7
    results = run_protocol(
        half_method, Halves(), image, torch.tensor([0]), perturbations=[("blur", "small")]
    )
    assert results[0].kept.tolist() == [True]
    assert results[0].distances.item() == pytest.approx(0.0, abs=1e-12)
    old_choice = run_protocol(
        half_method, Halves(), image, torch.tensor([0]), perturbations=[("blur", "small")],
        perturbed_target="original",
    )  # fmt: skip
    assert old_choice[0].distances.item() == pytest.approx(0.0, abs=1e-12)


def test_an_images_distances_do_not_depend_on_the_other_images_of_the_call():
    """One generator drew the noise for the whole batch: an image's 'uniform big' distance was
    0.0565 in a batch of 6 and 0.0609 in a batch of 3, so a data set run in chunks gave
    numbers that could not be compared."""
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    perturbations = [("gaussian", "big"), ("uniform", "big"), ("blur", "small")]

    def distances(batch):
        results = run_protocol(identity_method, Threshold(), batch, perturbations=perturbations)
        return torch.stack([r.distances for r in results], dim=1)

    whole = distances(images)
    parts = torch.cat([distances(images[3:]), distances(images[:3])])
    torch.testing.assert_close(parts, torch.cat([whole[3:], whole[:3]]), rtol=0, atol=0)
    torch.testing.assert_close(distances(images[4:5]), whole[4:5], rtol=0, atol=0)
    same_values = torch.cat([images[:1], images[:1]])  # the same image twice: the same noise
    twice = distances(same_values)
    assert torch.equal(twice[0], twice[1])
    assert not torch.equal(whole[0, :2], whole[1, :2])  # other images, other noise
    other_seed = run_protocol(identity_method, Threshold(), images, perturbations=perturbations,
                              seed=1)  # fmt: skip
    alone = run_protocol(identity_method, Threshold(), images, perturbations=perturbations[1:2])
    torch.testing.assert_close(alone[0].distances, whole[:, 1], rtol=0, atol=0)  # order too
    assert not torch.equal(torch.stack([r.distances for r in other_seed], 1), whole)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"perturbations": ()}, "perturbations is empty"),
        ({"perturbations": [("noise", "big")]}, "kind must be one of"),
        ({"perturbations": [("blur", "huge")]}, "severity for 'blur' must be one of"),
        ({"perturbations": [("blur", None)]}, "severity for 'blur' must be one of .*got None"),
        ({"normalisation": "L2"}, "normalisation must be 'l1', 'sum' or 'max', got 'L2'"),
        ({"perturbations": [("blur", float("nan"))]}, "'blur' must be a finite number > 0"),
        ({"perturbations": [("blur", 0.0)]}, "'blur' must be a finite number > 0, got 0.0"),
        ({"perturbations": [("gaussian", float("inf"))]}, "'gaussian' must be a finite number >="),
        ({"perturbations": [("uniform", -0.1)]}, "'uniform' must be a finite number >= 0"),
        ({"images": torch.rand(0, 3, 8, 8)}, "images is an empty batch"),
    ],
)
def test_bad_protocol_settings_are_refused_before_anything_is_explained(options, message):
    def method(model, images, targets, mask):
        raise AssertionError("nothing is explained before the arguments are checked")

    images = options.pop("images", torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=message):
        run_protocol(method, Threshold(), images, **options)


def test_welch_test_of_no_results_says_so():
    with pytest.raises(ValueError, match="welch_test needs the results of run_protocol; got none"):
        welch_test([])


def test_a_severity_draws_the_same_noise_whatever_type_holds_its_number():
    """The noise was seeded with the severity's repr: ``np.float64(0.05)`` (a value from
    ``np.linspace``) drew other noise than ``0.05``, and ``1`` other noise than ``1.0``."""
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def distances(severity):
        results = run_protocol(
            identity_method, Threshold(), images, perturbations=[("gaussian", severity)]
        )
        return results[0].distances

    reference = distances(0.05)
    for same in (np.float64(0.05), np.linspace(0, 0.1, 3)[1]):
        torch.testing.assert_close(distances(same), reference, rtol=0, atol=0)
    torch.testing.assert_close(distances(np.int64(1)), distances(1.0), rtol=0, atol=0)
    torch.testing.assert_close(distances(1), distances(1.0), rtol=0, atol=0)
