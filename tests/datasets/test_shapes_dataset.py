import csv
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ctc_plugin.datasets import TRAIN_SEED, ShapesDataset, label_of, render, write_split
from ctc_plugin.datasets.export import sample_item, sample_path, write_samples
from ctc_plugin.datasets.scene import PALETTE, place, render_background


def test_items_have_the_documented_types_and_ranges():
    data = ShapesDataset("shapes", size=4, seed=5, image_size=64)
    assert data.classes == ["circle", "square", "triangle", "star", "cross", "ring"]
    assert data.num_classes == 6 and len(data) == 4
    item = data[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["evidence"].shape == (64, 64) and item["evidence"].dtype == torch.bool
    assert item["instances"].dtype == torch.int64
    assert isinstance(item["label"], int) and 0 <= item["label"] < 6
    assert ShapesDataset("composite", size=1).classes == ["inside", "outside"]


@pytest.mark.parametrize("split", ["shapes", "composite"])
def test_same_seed_same_items_other_seed_other_items(split):
    first, again = ShapesDataset(split, size=5, seed=3), ShapesDataset(split, size=9, seed=3)
    other = ShapesDataset(split, size=5, seed=4)
    for i in range(5):
        a, b, c = first[i], again[i], other[i]
        for key in ("image", "evidence", "instances"):
            assert torch.equal(a[key], b[key])
        assert a["label"] == b["label"]
        assert not torch.equal(a["image"], c["image"])
    training = ShapesDataset(split, size=5, seed=TRAIN_SEED)
    assert all(not torch.equal(training[i]["image"], first[i]["image"]) for i in range(5))


@pytest.mark.parametrize("split", ["shapes", "composite"])
def test_masks_cover_exactly_the_drawn_objects(split):
    data = ShapesDataset(split, size=6, seed=11, image_size=80)
    for i in range(len(data)):
        scene, label = data.scene(i)
        item = data[i]
        image = item["image"].permute(1, 2, 0).numpy()
        instances = item["instances"].numpy()
        background = render_background(scene)
        # Outside the objects the image is the background, untouched.
        np.testing.assert_array_equal(image[instances == 0], background[instances == 0])
        assert set(np.unique(instances)) == set(range(len(scene.objects) + 1))
        for index, obj in enumerate(scene.objects, start=1):
            inside = instances == index
            np.testing.assert_array_equal(inside, obj.mask(instances.shape))
            # Inside, every pixel is the object's palette colour darkened by its texture.
            ratio = image[inside] / np.asarray(PALETTE[obj.colour], np.float32)
            np.testing.assert_allclose(ratio, ratio[:, :1].repeat(3, 1), rtol=1e-5)
            assert ratio.min() >= 1 - obj.depth - 1e-5 and ratio.max() <= 1 + 1e-5
            assert np.any(np.abs(image[inside] - background[inside]) > 0.05)
        evidence_ids = [k for k, obj in enumerate(scene.objects, 1) if obj.evidence]
        assert len(evidence_ids) == (1 if split == "shapes" else 2)
        np.testing.assert_array_equal(item["evidence"].numpy(), np.isin(instances, evidence_ids))
        assert 1 <= len(scene.distractors) <= 3
        assert item["label"] == label == label_of(scene)


def test_labels_follow_their_definition():
    shapes = ShapesDataset("shapes", size=60, seed=2)
    for i in range(len(shapes)):
        scene, label = shapes.scene(i)
        (evidence,) = [obj for obj in scene.objects if obj.evidence]
        assert shapes.classes[label] == evidence.kind
    composite = ShapesDataset("composite", size=60, seed=2)
    labels = []
    for i in range(len(composite)):
        scene, label = composite.scene(i)
        container, content = [obj for obj in scene.objects if obj.evidence]
        # Independent check: the content's centre is inside the container's hole (a circle for a
        # hoop, a square for a frame) exactly when the label says "inside".
        dy, dx = content.cy - container.cy, content.cx - container.cx
        hole = 0.72 * container.size
        if container.kind == "hoop":
            inside = np.hypot(dy, dx) < hole
        else:  # rotate into the frame's axes; its corners are at `angle`, so edges at 45 degrees
            u = dy * np.sin(container.angle) + dx * np.cos(container.angle)
            v = dy * np.cos(container.angle) - dx * np.sin(container.angle)
            inside = abs(u) + abs(v) < hole
        assert label == (0 if inside else 1)
        labels.append(label)
    assert 15 < sum(labels) < 45  # both classes are common


@settings(max_examples=25, deadline=None)
@given(
    split=st.sampled_from(["shapes", "composite"]),
    index=st.integers(0, 10_000),
    move_seed=st.integers(0, 2**31),
)
def test_moving_or_recolouring_distractors_never_changes_label_or_evidence(split, index, move_seed):
    data = ShapesDataset(split, size=index + 1, seed=9, image_size=64)
    scene, label = data.scene(index)
    rng = np.random.default_rng(move_seed)
    placed = [obj for obj in scene.objects if obj.evidence]
    moved = []
    for distractor in scene.distractors:
        centre = place(rng, distractor.kind, distractor.size, scene.image_size, placed)
        if centre is None:
            continue
        new = replace(
            distractor,
            cy=centre[0],
            cx=centre[1],
            colour=int(rng.integers(len(PALETTE))),
            angle=float(rng.uniform(0, 6.3)),
        )
        placed.append(new)
        moved.append(new)
    changed = scene.with_distractors(tuple(moved))
    assert label_of(changed) == label
    image, evidence, _ = render(scene)
    new_image, new_evidence, _ = render(changed)
    np.testing.assert_array_equal(evidence, new_evidence)
    np.testing.assert_array_equal(image[:, evidence], new_image[:, new_evidence])


def test_invalid_arguments_are_rejected_with_a_reason():
    with pytest.raises(ValueError, match="unknown split"):
        ShapesDataset("digits")
    with pytest.raises(ValueError, match="at least 32"):
        ShapesDataset(image_size=16)
    with pytest.raises(ValueError, match="non-negative"):
        ShapesDataset(size=-1)
    with pytest.raises(IndexError):
        ShapesDataset(size=2)[2]


def test_write_split_round_trips_through_png(tmp_path):
    data = ShapesDataset("composite", size=3, seed=4, image_size=48)
    root = write_split(data, tmp_path / "split", show_progress=False)
    with open(root / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["label"]) for row in rows] == [data[i]["label"] for i in range(3)]
    assert [row["class"] for row in rows] == [data.classes[data[i]["label"]] for i in range(3)]
    for i in range(3):
        item = data[i]
        image = np.asarray(Image.open(root / "images" / f"{i:05d}.png"), np.float32) / 255
        np.testing.assert_allclose(image, item["image"].permute(1, 2, 0).numpy(), atol=0.5 / 255)
        evidence = np.asarray(Image.open(root / "evidence" / f"{i:05d}.png")) > 127
        np.testing.assert_array_equal(evidence, item["evidence"].numpy())
        instances = np.asarray(Image.open(root / "instances" / f"{i:05d}.png"))
        np.testing.assert_array_equal(instances, item["instances"].numpy())


@pytest.mark.parametrize("split", ["shapes", "composite"])
def test_bundled_samples_are_the_documented_items(split, tmp_path):
    write_samples(tmp_path)
    for kind in ("image", "evidence"):
        bundled = np.asarray(Image.open(sample_path(split, kind)))
        fresh = np.asarray(Image.open(tmp_path / sample_path(split, kind).name))
        np.testing.assert_array_equal(bundled, fresh)
    evidence = np.asarray(Image.open(sample_path(split, "evidence"))) > 127
    np.testing.assert_array_equal(evidence, sample_item(split)["evidence"].numpy())
    with pytest.raises(ValueError):
        sample_path(split, "labels")
