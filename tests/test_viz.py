"""ctc_plugin.viz.plot_segment_scores: every score form, symmetric colour ranges, panels."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ctc_plugin import CTC  # noqa: E402
from ctc_plugin.features import GridSegmenter, segment_means  # noqa: E402
from ctc_plugin.viz import plot_segment_scores, save_figure  # noqa: E402


@pytest.fixture
def scene():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 24, 36)
    mask = GridSegmenter(cells=(2, 3))(image)  # ids 0..5
    return image, mask


def painted(axis) -> np.ndarray:
    """The values drawn over the grayscale image of a method panel."""
    return np.ma.filled(axis.images[1].get_array().astype(float), np.nan)


def test_every_score_form_paints_each_segment_with_its_score(scene):
    image, mask = scene
    values = torch.tensor([3.0, -1.0, 0.5, 2.0, -4.0, 0.0])
    by_id = {i: float(v) for i, v in enumerate(values)}
    shuffled = [5, 3, 1, 0, 2, 4]
    figure = plot_segment_scores(
        image[0],
        mask[0, 0],
        {
            "tensor": values,
            "mapping": by_id,
            "pair": (shuffled, values[shuffled]),
            "map": values[mask[0, 0]],
        },
        top_k=3,
    )
    try:
        panels = figure.axes[1:5:1]
        expected = values[mask[0, 0]].numpy()
        method_axes = [
            axis for axis in figure.axes if axis.get_title() in {"tensor", "mapping", "pair", "map"}
        ]
        assert [axis.get_title() for axis in method_axes] == ["tensor", "mapping", "pair", "map"]
        for axis in method_axes:
            np.testing.assert_allclose(painted(axis), expected)
            # ranks 1..3 written on the three highest segments (ids 0, 3, 2)
            assert sorted(text.get_text() for text in axis.texts) == ["1", "2", "3"]
        assert len(panels) == 4
    finally:
        plt.close(figure)


def test_ids_given_separately_align_the_scores(scene):
    image, mask = scene
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    order = [4, 0, 5, 1, 3, 2]
    figure = plot_segment_scores(image, mask, values[order], ids=order, top_k=0)
    try:
        np.testing.assert_allclose(painted(figure.axes[1]), values[mask[0, 0].numpy()])
    finally:
        plt.close(figure)


@pytest.mark.parametrize("values", [[0.1, 0.5, 2.0, 0.0, 0.3, 1.0], [-3, -1, 0, -0.5, -2, -0.1]])
def test_the_colour_range_is_symmetric_around_zero(scene, values):
    image, mask = scene
    figure = plot_segment_scores(
        image, mask, {"a": torch.tensor(values), "b": 10 * torch.tensor(values)}
    )
    try:
        limit = max(abs(v) for v in values)
        for axis, scale in zip([figure.axes[1], figure.axes[2]], [1, 10]):
            low, high = axis.images[1].get_clim()
            assert low == -high == pytest.approx(-limit * scale)  # each panel its own units
    finally:
        plt.close(figure)


def test_ctc_feature_scores_are_drawn_directly(scene):
    image, mask = scene
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).eval()
    attributions, scores = CTC(model).attribute(
        image, target=1, feature_mask=mask, return_feature_scores=True
    )
    # CTC repeats each score in every channel: one channel is the map (summing would triple it)
    figure = plot_segment_scores(image, mask, {"CTC": scores, "map": attributions[0, 0]})
    try:
        np.testing.assert_allclose(painted(figure.axes[1]), painted(figure.axes[2]), rtol=1e-6)
        ids, means = segment_means(attributions[0, 0], mask)
        np.testing.assert_allclose(means.numpy(), scores.scores[0].numpy(), rtol=1e-6)
    finally:
        plt.close(figure)


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (4, 1)])
def test_segment_means_of_maps_one_pixel_high_or_wide(size):
    """Leading dims of size 1 go, the map's own stay: a 1 x 1 image has one segment."""
    mask = torch.arange(size[0] * size[1]).view(1, 1, *size) % 2
    values = torch.arange(3.0 * size[0] * size[1]).view(1, 3, *size)
    ids, means = segment_means(values, mask)
    summed = values[0].sum(0).flatten()
    expected = [float(summed[mask.flatten() == i].mean()) for i in ids.tolist()]
    np.testing.assert_allclose(means.numpy(), expected)
    ids, means = segment_means(values[0, 0], mask[0, 0])
    assert means.shape == ids.shape == (min(2, size[0] * size[1]),)
    with pytest.raises(ValueError, match="same size"):
        segment_means(values[..., :0], mask)


def test_drawing_into_given_axes_and_saving(scene, tmp_path):
    image, mask = scene
    figure, axes = plt.subplots(2, 3)
    for row in axes:
        assert (
            plot_segment_scores(
                image, mask, {"x": torch.arange(6.0), "y": -torch.arange(6.0)}, axes=row
            )
            is figure
        )
    path = save_figure(figure, tmp_path / "sub" / "grid.png")
    assert Image.open(path).format == "PNG"
    evidence = torch.zeros(24, 36, dtype=torch.bool)
    evidence[5:15, 5:15] = True
    figure = plot_segment_scores(image, mask, torch.arange(6.0), evidence=evidence, title="t")
    assert "evidence" in figure.axes[0].get_title()
    plt.close(figure)


def test_shapes_that_do_not_fit_are_refused(scene):
    image, mask = scene
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        plot_segment_scores(image[0, :2], mask, torch.arange(6.0))
    with pytest.raises(ValueError, match=r"feature_mask must be shaped.*resize it to the image's "
                       r"size \(torch.nn.functional.interpolate\(\.\.\., size=\(\d+, \d+\), "
                       r"mode='nearest-exact'\)"):  # fmt: skip
        plot_segment_scores(image, mask[..., :10], torch.arange(6.0))
    with pytest.raises(ValueError, match=r"the map of 'CTC' must be shaped.*mode='bilinear'"):
        plot_segment_scores(image, mask, {"CTC": torch.rand(1, 1, 4, 4)})
    with pytest.raises(ValueError, match="pass ids="):
        plot_segment_scores(image, mask, torch.arange(4.0))
    figure, axes = plt.subplots(1, 2)
    with pytest.raises(ValueError, match="axes must hold 3 axes"):
        plot_segment_scores(
            image, mask, {"a": torch.arange(6.0), "b": torch.arange(6.0)}, axes=axes
        )
    plt.close("all")


def _score_panel(figure) -> np.ndarray:
    """The painted values of the figure's second panel (the scores)."""
    return np.asarray(figure.axes[1].images[0].get_array())


def test_two_scores_in_a_tuple_are_two_scores_and_one_number_is_one():
    """(0.5, 0.7) was read as (ids, scores) and refused; a 0-d tensor as a map of shape ()."""
    image = torch.rand(3, 8, 12)
    halves = torch.zeros(8, 12, dtype=torch.long)
    halves[:, 6:] = 1
    as_tuple = plot_segment_scores(image, halves, (0.5, 0.7))
    as_list = plot_segment_scores(image, halves, [0.5, 0.7])
    np.testing.assert_array_equal(_score_panel(as_tuple), _score_panel(as_list))
    one = plot_segment_scores(image, torch.zeros(8, 12, dtype=torch.long), torch.tensor(1.0))
    assert np.isfinite(_score_panel(one)).all()
    plt.close("all")


def test_ids_and_scores_given_the_wrong_way_round_are_refused():
    """(scores, ids) had its fractional "ids" truncated: 0.7 painted on segment 0, silently."""
    image = torch.rand(3, 8, 12)
    halves = torch.zeros(8, 12, dtype=torch.long)
    halves[:, 6:] = 1
    right = plot_segment_scores(image, halves, (np.array([0, 1]), np.array([0.7, 0.2])))
    np.testing.assert_array_equal(painted(right.axes[1]), np.where(halves == 0, 0.7, 0.2))
    with pytest.raises(ValueError, match="ids of \\(ids, scores\\) must be whole numbers"):
        plot_segment_scores(image, halves, (np.array([0.7, 0.2]), np.array([0, 1])))
    plt.close("all")


def test_an_empty_image_is_refused_saying_so():
    with pytest.raises(ValueError, match="the image is empty"):
        plot_segment_scores(torch.rand(3, 0, 0), torch.zeros(0, 0, dtype=torch.long), [])


def test_a_figure_path_with_a_tilde_goes_to_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    figure = plt.figure()
    written = save_figure(figure, "~/figures/x.png")
    assert written == tmp_path / "figures" / "x.png" and written.is_file()


def test_a_float_mask_of_whole_numbers_draws_as_its_integer_mask_and_fractions_are_refused(scene):
    """A float mask was truncated to ids: 1.5 became 1, merging two segments without a word."""
    image, mask = scene
    scores = torch.arange(6.0)
    as_float = plot_segment_scores(image, mask.double(), scores)
    as_integer = plot_segment_scores(image, mask, scores)
    np.testing.assert_array_equal(painted(as_float.axes[1]), painted(as_integer.axes[1]))
    plt.close("all")
    for bad in (0.5, float("nan")):
        fractional = mask.double()
        fractional[0, 0, 0, 0] = bad
        with pytest.raises(ValueError, match="feature_mask must hold integer segment ids"):
            plot_segment_scores(image, fractional, scores)
    plt.close("all")
