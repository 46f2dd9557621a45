"""Acceptance: with oracle instance masks as SAM stand-in, the evidence object is selected.

The synthetic images know which object decides the class. Their instance masks play SAM's part,
the shipped zoo ResNet is the classifier and LRP-alpha1-beta0 through Zennit guides the selection.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ctc_plugin.features import select_features, to_partition

IMAGES = 40


@pytest.fixture(scope="module")
def selections() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    from ctc_plugin import zoo
    from ctc_plugin.datasets import ShapesDataset

    try:
        model = zoo.load("resnet")
    except FileNotFoundError as error:  # pragma: no cover - weights are shipped
        pytest.skip(f"zoo weights missing: {error}")
    dataset = ShapesDataset("shapes", size=IMAGES, seed=1)  # not the training seed
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: the autouse one-thread fixture runs after this
    try:
        for index in range(IMAGES):
            results.append(select_one(model, dataset[index]))
    finally:
        torch.set_num_threads(threads)
    return results


def select_one(model: torch.nn.Module, item: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oracle instances to a partition, then the published selection."""
    instances = item["instances"].numpy()
    masks = [instances == i for i in np.unique(instances) if i > 0]
    partition = to_partition(masks, shape=instances.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        details = select_features(partition[None, None], item["image"][None], model=model)
    return partition.numpy(), details.selected[0], item["evidence"].numpy()


def evidence_selected(partition: np.ndarray, selected: np.ndarray, evidence: np.ndarray) -> bool:
    """Whether most evidence pixels lie in selected features."""
    return bool(np.isin(partition, selected)[evidence].mean() > 0.5)


@pytest.mark.parametrize("k", [9, 2])
def test_evidence_is_among_the_selected_features(selections, k):
    hits = [evidence_selected(p, s[:k], e) for p, s, e in selections]
    assert np.mean(hits) >= 0.95, f"evidence selected in {np.mean(hits):.0%} of images with k={k}"


def test_selection_beats_chance_at_k1(selections):
    # the feature ranked first is the evidence far more often than 1 / (number of features)
    hits = [evidence_selected(p, s[:1], e) for p, s, e in selections]
    chance = np.mean([1 / (p.max() + 1) for p, _, _ in selections])
    assert np.mean(hits) > chance + 0.3


def test_model_left_in_eval_mode_and_unchanged():
    from ctc_plugin import zoo
    from ctc_plugin.datasets import ShapesDataset

    try:
        model = zoo.load("resnet")
    except FileNotFoundError:  # pragma: no cover
        pytest.skip("zoo weights missing")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    item = ShapesDataset("shapes", size=1, seed=2)[0]
    partition = torch.from_numpy(item["instances"].numpy())[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        select_features(partition, item["image"][None], model=model)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_boolean_masks_are_refused_with_the_conversion():
    """Two boolean masks of one image, given beside two images, were read as one label map per
    image (two features each), silently."""
    from ctc_plugin.features import select_features

    masks = torch.zeros(2, 48, 48, dtype=torch.bool)
    masks[0, :24], masks[1, 24:] = True, True
    with pytest.raises(TypeError, match=r"integer tensor of feature ids; .*as_feature_mask"):
        select_features(masks, torch.rand(2, 3, 48, 48), relevance=torch.rand(2, 48, 48))
