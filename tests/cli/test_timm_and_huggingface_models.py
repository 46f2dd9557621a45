"""``ctc-plugin explain --model timm:NAME --weights PATH`` and ``--model hf:FOLDER``.

Tiny models are built here and saved to a temporary folder (nothing is downloaded): a timm
``resnet10t`` and ``test_vit`` state dict, and Hugging Face ViT and ConvNeXt classifiers written
with ``save_pretrained`` (tiny configurations of ``ctc_plugin.model_families``), with and
without their image processors. Each run's preprocessing is checked against the library's own
(timm's ``create_transform``, the saved image processor), its logits against the network fed
the normalised pixels, and its class names against the weights' head and ``id2label``.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ctc_plugin.adapters.huggingface import HuggingFaceClassifier
from ctc_plugin.cli import main
from ctc_plugin.images import Normalize

FAST = ["--segmenter", "grid", "--segments", "4", "--top", "4", "--no-progress"]
LABELS = ["cat", "dog", "owl", "fox", "elk"]  # model_families.CLASSES = 5


def smooth_photo(path, height: int, width: int):
    """A smooth colour gradient (resamplers agree on it to a few hundredths)."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (height + width)], -1)
    Image.fromarray(pixels.round().astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The photos, built once for the module; the models' fixtures add theirs."""
    folder = tmp_path_factory.mktemp("models")
    return {
        "folder": folder,
        "wide": smooth_photo(folder / "wide.png", 44, 60),
        "square": smooth_photo(folder / "square.png", 60, 60),
    }


@pytest.fixture(scope="module")
def timm_weights(saved):
    """State dicts of timm's resnet10t (7 classes) and test_vit (ImageNet's 1000)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    for name, classes in (("resnet10t", 7), ("test_vit", 1000)):
        saved[name] = saved["folder"] / f"{name}.pth"
        torch.save(timm.create_model(name, num_classes=classes).state_dict(), saved[name])
    return saved


@pytest.fixture(scope="module")
def hf_folders(saved):
    """Tiny ViT (with and without its image processor) and ConvNeXt, saved with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    from ctc_plugin.model_families import huggingface_classifier

    vit = huggingface_classifier("ViT").model.float()  # randomised: logits follow the image
    vit.config.id2label = dict(enumerate(LABELS))
    vit.config.label2id = {name: i for i, name in enumerate(LABELS)}
    for name in ("vit", "vit-bare"):
        vit.save_pretrained(saved["folder"] / name)
    transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]
    ).save_pretrained(saved["folder"] / "vit")
    convnext = huggingface_classifier("ConvNeXt").model.float()  # LABEL_0, ... names
    convnext.save_pretrained(saved["folder"] / "convnext")
    transformers.ConvNextImageProcessor(
        size={"shortest_edge": 48},
        crop_pct=0.875,
        image_mean=[0.4, 0.5, 0.6],
        image_std=[0.2, 0.3, 0.25],
    ).save_pretrained(saved["folder"] / "convnext")
    siglip2 = huggingface_classifier("SigLIP 2").model.float()  # patch sequences
    siglip2.save_pretrained(saved["folder"] / "siglip2")
    transformers.Siglip2ImageProcessor(patch_size=8, max_num_patches=16).save_pretrained(
        saved["folder"] / "siglip2"
    )
    names = ("vit", "vit-bare", "convnext", "siglip2")
    saved.update({name: saved["folder"] / name for name in names})
    return saved


def explain(tmp_path, capsys, image, model: list[str], *extra: str):
    """Run ``explain`` with ``--save``; return (stdout, the arrays, the JSON summary)."""
    save = tmp_path / "run.npz"
    argv = ["explain", str(image), "--model", *model, *FAST, *extra]
    assert main([*argv, "--out", str(tmp_path / "fig.png"), "--save", str(save)]) == 0
    assert Image.open(tmp_path / "fig.png").format == "PNG"
    with np.load(save, allow_pickle=False) as arrays:
        data = {key: arrays[key] for key in arrays.files}
    return capsys.readouterr().out, data, json.loads(save.with_suffix(".json").read_text())


def error(capsys, *argv: str) -> str:
    assert main(["explain", *argv, "--out", "unused.png"]) == 2
    return capsys.readouterr().err


def logits_of(network, preprocessing: dict, arrays) -> torch.Tensor:
    """The network fed the saved pixels, normalised as the run says it normalised them."""
    pixels = torch.from_numpy(arrays["image0/pixels"])[None]
    with torch.no_grad():
        return network(Normalize(preprocessing["mean"], preprocessing["std"])(pixels))[0]


def test_a_timm_model_gets_its_class_count_and_timms_preprocessing(timm_weights, tmp_path, capsys):
    import timm

    model = ["timm:resnet10t", "--weights", str(timm_weights["resnet10t"])]
    text, arrays, summary = explain(tmp_path, capsys, timm_weights["wide"], model)
    network = timm.create_model("resnet10t", num_classes=7)
    network.load_state_dict(torch.load(timm_weights["resnet10t"], weights_only=True))
    config = timm.data.resolve_model_data_config(network.eval())
    transform = timm.data.create_transform(**config)  # timm's own evaluation transform
    resize, crop = transform.transforms[:2]
    prep = summary["preprocessing"]
    assert (prep["resize"], prep["crop"]) == (resize.size, crop.size[0])  # 201, 176
    assert prep["mean"] == list(config["mean"]) and prep["interpolation"] == "bicubic"
    assert prep["from"] == "timm data config"
    assert "60x44 -> 176x176" in text
    theirs = transform(Image.open(timm_weights["wide"]).convert("RGB"))
    ours = Normalize(prep["mean"], prep["std"])(torch.from_numpy(arrays["image0/pixels"])[None])
    assert (ours[0] - theirs).abs().mean() < 0.01
    assert arrays["image0/logits"].shape == (7,)  # the weights' head, numbered classes
    assert summary["images"][0]["predicted"]["name"] is None
    expected = logits_of(network, prep, arrays)
    np.testing.assert_allclose(arrays["image0/logits"], expected.numpy(), rtol=1e-4, atol=1e-5)


def test_a_timm_head_of_imagenets_classes_gets_their_names(timm_weights, tmp_path, capsys):
    model = ["timm:test_vit", "--weights", str(timm_weights["test_vit"])]
    image = timm_weights["square"]
    text, arrays, summary = explain(tmp_path, capsys, image, model, "--target", "goldfish")
    assert arrays["image0/logits"].shape == (1000,)
    assert "explaining target 1 (goldfish)" in text
    assert summary["preprocessing"]["crop"] == 160 and summary["preprocessing"]["mean"] == [0.5] * 3


def test_a_hugging_face_folder_with_its_processor_and_labels(hf_folders, tmp_path, capsys):
    import transformers

    folder = hf_folders["vit"]
    methods = ["--method", "ctc", "integrative-cam"]  # the blocks of transformers' ViT are known
    text, arrays, summary = explain(
        tmp_path, capsys, hf_folders["square"], [f"hf:{folder}"], *methods
    )
    assert arrays["image0/integrative-cam/attribution"].shape == (32, 32)
    processor = transformers.AutoImageProcessor.from_pretrained(folder, use_fast=True)
    prep = summary["preprocessing"]
    assert (prep["resize"], prep["crop"]) == (32, 32) and prep["std"] == [0.2, 0.25, 0.3]
    assert prep["from"] == f"Hugging Face folder {folder}: its image processor"
    theirs = processor(images=Image.open(hf_folders["square"]), return_tensors="pt").pixel_values
    ours = Normalize(prep["mean"], prep["std"])(torch.from_numpy(arrays["image0/pixels"])[None])
    assert (ours - theirs).abs().mean() < 0.01
    predicted = summary["images"][0]["predicted"]
    assert predicted["name"] == LABELS[predicted["index"]]
    assert f"predicted {predicted['index']} ({LABELS[predicted['index']]})" in text
    network = transformers.AutoModelForImageClassification.from_pretrained(folder).eval()
    expected = logits_of(HuggingFaceClassifier(network), prep, arrays)
    np.testing.assert_allclose(arrays["image0/logits"], expected.numpy(), rtol=1e-4, atol=1e-5)
    assert "note:" not in text


def test_a_crop_pct_processor_and_default_labels(hf_folders, tmp_path, capsys):
    model = [f"hf:{hf_folders['convnext']}"]
    text, arrays, summary = explain(tmp_path, capsys, hf_folders["wide"], model)
    prep = summary["preprocessing"]
    assert (prep["resize"], prep["crop"]) == (54, 48)  # ConvNeXt: 48 / 0.875, then the crop
    assert "60x44 -> 48x48" in text and summary["images"][0]["predicted"]["name"] is None
    assert "LABEL_" not in text


def test_a_siglip2_folder_gets_its_patch_budgets_square_and_every_method(
    hf_folders, tmp_path, capsys
):
    """SigLIP 2's processor fits photos into 16 patches of 8 pixels: 32 x 32 for a square one,
    which the run takes (and says so); the model gets the photo cut into patches."""
    import transformers

    from ctc_plugin.adapters.huggingface import patch_sequence

    folder = hf_folders["siglip2"]
    methods = ["--method", "ctc", "integrative-cam"]
    text, arrays, summary = explain(
        tmp_path, capsys, hf_folders["square"], [f"hf:{folder}"], *methods
    )
    prep = summary["preprocessing"]
    assert (prep["resize"], prep["crop"]) == (32, 32) and prep["mean"] == [0.5, 0.5, 0.5]
    assert "note: hf:" in text and "16 patches keeping its aspect ratio" in text
    assert arrays["image0/integrative-cam/attribution"].shape == (32, 32)
    processor = transformers.AutoImageProcessor.from_pretrained(folder, use_fast=True)
    theirs = processor(images=Image.open(hf_folders["square"]), return_tensors="pt")
    assert theirs.spatial_shapes.tolist() == [[4, 4]]
    ours = Normalize(prep["mean"], prep["std"])(torch.from_numpy(arrays["image0/pixels"])[None])
    assert (patch_sequence(ours, 8)["pixel_values"] - theirs.pixel_values).abs().mean() < 0.01
    network = transformers.AutoModelForImageClassification.from_pretrained(folder).eval()
    expected = logits_of(HuggingFaceClassifier(network), prep, arrays)
    np.testing.assert_allclose(arrays["image0/logits"], expected.numpy(), rtol=1e-4, atol=1e-5)


def test_a_folder_without_processor_reads_the_models_size_unnormalised(
    hf_folders, tmp_path, capsys
):
    model = [f"hf:{hf_folders['vit-bare']}"]
    text, arrays, summary = explain(tmp_path, capsys, hf_folders["square"], model)
    prep = summary["preprocessing"]
    assert (prep["resize"], prep["crop"], prep["mean"]) == (32, 32, None)
    assert "no preprocessor_config.json" in prep["from"]
    assert "note: hf:" in text and "no normalisation" in text and "--mean" in text


def test_a_size_the_hugging_face_model_cannot_take_gets_the_advice(hf_folders, capsys):
    argv = [str(hf_folders["wide"]), "--model", f"hf:{hf_folders['vit']}", "--crop", "none"]
    message = error(capsys, *argv)
    assert "--resize/--crop" in message and "--resize 32 --crop 32" in message


def test_timm_errors_say_what_to_do(timm_weights, capsys):
    image, vit_weights = str(timm_weights["square"]), str(timm_weights["test_vit"])
    needed = error(capsys, image, "--model", "timm:resnet10t")
    assert "give its weights with --weights PATH" in needed and "nothing is downloaded" in needed
    unknown = error(capsys, image, "--model", "timm:resnet10", "--weights", vit_weights)
    assert "timm has no model 'resnet10'" in unknown and "resnet10t" in unknown
    assert "timm.list_models" in unknown
    wrong = error(capsys, image, "--model", "timm:resnet10t", "--weights", vit_weights)
    assert "do not fit the model" in wrong and "Missing key(s)" in wrong


def test_hugging_face_errors_say_what_to_do(hf_folders, tmp_path, capsys, monkeypatch):
    image = str(hf_folders["square"])
    hub = error(capsys, image, "--model", "hf:google/vit-base-patch16-224")
    assert "nothing is downloaded" in hub and "save_pretrained(FOLDER)" in hub
    weights = error(capsys, image, "--model", f"hf:{hf_folders['vit']}", "--weights", image)
    assert "takes no --weights" in weights
    assert "holds no config.json" in error(capsys, image, "--model", f"hf:{tmp_path}")
    # hf: is read before module:callable: a module named hf is not imported
    (tmp_path / "hf.py").write_text("def build():\n    raise AssertionError('imported')\n")
    monkeypatch.chdir(tmp_path)
    assert "no folder 'build'" in error(capsys, image, "--model", "hf:build")


def test_a_missing_library_says_what_to_install(saved, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    monkeypatch.setitem(sys.modules, "transformers", None)
    weights = str(saved["square"])  # never read: the import fails first
    assert "pip install timm" in error(capsys, "--model", "timm:resnet10t", "--weights", weights)
    assert "pip install transformers" in error(capsys, "--model", f"hf:{saved['folder']}")
