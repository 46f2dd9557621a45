"""``--targets label`` on ImageNet's class folders, named by WordNet ID (``n01440764``).

Before, a model of ImageNet's 1000 classes explained a folder holding some of its classes
(Imagenette, a few classes of the validation set) for the wrong classes when it had no class
names (a folder's label is its index among the folders present: ``n02102040``, ImageNet's
class 217, became class 1), and refused the folders when it had names (they are not
"tench" or "English springer").
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.cli import main
from ctc_plugin.runs import read_results
from ctc_plugin.runs.imagenet import imagenet_classes, imagenet_synsets
from tests.runs.test_explain_dataset import tiny
from tests.runs.test_run_identity import _image

FOLDERS = {"n01440764": 0, "n02102040": 217, "n03888257": 701}  # tench, springer, parachute


def tiny_imagenet():
    """A small classifier of 1000 classes, without class names, for ``--model module:callable``."""
    return tiny(classes=1000)


@pytest.mark.parametrize("names", [False, True], ids=["without-names", "with-names"])
def test_wordnet_folders_are_explained_for_their_imagenet_classes(tmp_path, names):
    model = ["--model", "tests.runs.test_imagenet_class_folders:tiny_imagenet"]
    if names:  # a timm architecture of ImageNet's head gets its class names
        timm = pytest.importorskip("timm")
        weights = tmp_path / "weights.pt"
        torch.save(timm.create_model("mobilenetv3_small_050").state_dict(), weights)
        model = ["--model", "timm:mobilenetv3_small_050", "--weights", str(weights)]
    for folder in FOLDERS:
        _image(tmp_path / "photos" / folder / "x.png", 32, 32)
    out = tmp_path / "run"
    argv = [
        "explain-dataset", str(tmp_path / "photos"), *model, "--methods", "gradcam",
        "--segmenter", "grid", "--segments", "4", "--targets", "label", "--no-progress",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    rows = read_results(out).to_pylist()
    assert {row["name"].split("/")[0]: row["target"] for row in rows} == FOLDERS


def test_the_list_is_imagenets_and_other_folders_keep_their_meaning():
    synsets = imagenet_synsets()
    assert len(synsets) == len(set(synsets)) == 1000 and list(synsets) == sorted(synsets)
    assert imagenet_classes(list(FOLDERS), 1000) == list(FOLDERS.values())
    assert imagenet_classes(list(FOLDERS), 10) is None  # not an ImageNet-1k model
    assert imagenet_classes([], 1000) is None


def test_a_model_whose_own_names_are_wordnet_ids_keeps_its_order(tmp_path):
    transformers = pytest.importorskip("transformers")
    names = list(reversed(imagenet_synsets()))  # WordNet IDs, in the model's own order
    config = transformers.ViTConfig(
        image_size=32, patch_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8, num_labels=1000, id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
    )  # fmt: skip
    folder = tmp_path / "hf"
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    for name in FOLDERS:
        _image(tmp_path / "photos" / name / "x.png", 32, 32)
    out = tmp_path / "run"
    argv = [
        "explain-dataset", str(tmp_path / "photos"), "--model", f"hf:{folder}", "--methods",
        "integrative-cam", "--segmenter", "grid", "--segments", "4", "--targets", "label",
        "--no-progress", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    rows = read_results(out).to_pylist()
    assert {row["name"].split("/")[0]: row["target"] for row in rows} == {
        name: names.index(name) for name in FOLDERS
    }


def test_a_stray_folder_beside_imagenet_folders_is_named(tmp_path, capsys):
    for folder in [*FOLDERS, "extra", "n99999999"]:
        _image(tmp_path / "photos" / folder / "x.png", 32, 32)
    argv = [
        "explain-dataset", str(tmp_path / "photos"), "--model",
        "tests.runs.test_imagenet_class_folders:tiny_imagenet", "--methods", "gradcam",
        "--segmenter", "grid", "--segments", "4", "--targets", "label", "--no-progress",
        "--out", str(tmp_path / "run"),
    ]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "3 class folders are ImageNet-1k classes" in error
    assert "2 are not (extra, n99999999)" in error


def test_imagenet_classes_of_mixed_folders():
    with pytest.raises(
        ValueError,
        match=r"1 class folder is an ImageNet-1k class .* but 1 is not \(cat\): move it out",
    ):
        imagenet_classes(["n01440764", "cat"], 1000)
    assert imagenet_classes(["cat", "dog"], 1000) is None  # no ImageNet folder at all
