"""``ctc-plugin explain``: every method, several images, ``--save`` contents, ImageNet names,
the progress bar, ``--version`` and a ``--help`` that imports no torch."""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import FeatureAblation
from PIL import Image

from ctc_plugin import CTC, zoo
from ctc_plugin.cli import main
from ctc_plugin.commands.methods import METHODS
from ctc_plugin.datasets import ShapesDataset
from ctc_plugin.features import segment_means
from ctc_plugin.images import ImagePreprocessing

ROOT = Path(__file__).parents[2]
FAST = ["--segmenter", "grid", "--segments", "9", "--lime-samples", "8", "--no-progress"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """A non-square shapes picture (56 x 40) and a square one (96 x 96)."""
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name, seed, size in [("wide", 4, (56, 40)), ("square", 9, (96, 96))]:
        item = ShapesDataset("shapes", size=1, seed=seed)[0]
        array = (item["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        paths[name] = folder / f"{name}.png"
        Image.fromarray(array).resize(size).save(paths[name])
    return paths


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> Path:
    """Random ResNet-18 weights in a local file (nothing is downloaded)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def load_saved(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return arrays, json.loads(path.with_suffix(".json").read_text())


def test_every_method_on_a_zoo_model_with_save(photos, tmp_path, capsys):
    out, save = tmp_path / "fig.png", tmp_path / "data" / "run.npz"
    argv = ["explain", str(photos["square"]), str(photos["wide"]), "--model", "resnet"]
    argv += ["--method", *METHODS, "--perturbations-per-eval", "4", *FAST]
    assert main([*argv, "--out", str(out), "--save", str(save)]) == 0
    text = capsys.readouterr().out
    for title in ["CTC (proportional)", "Integrative CAM", "Explainer", "FeatureAblation"]:
        assert title in text
    assert "Lime (8 samples)" in text and "Grad-CAM (" in text
    assert Image.open(out).format == "PNG"

    arrays, summary = load_saved(save)
    assert summary["methods"] == list(METHODS) and summary["model"] == "resnet"
    assert [image["path"] for image in summary["images"]] == [
        str(photos["square"]),
        str(photos["wide"]),
    ]
    # the zoo models' own preprocessing: shorter side 96, centre crop 96 x 96
    assert summary["preprocessing"]["resize"] == 96 and summary["preprocessing"]["crop"] == 96
    model = zoo.load("resnet")
    for index, image in enumerate(summary["images"]):
        key = f"image{index}"
        pixels, mask = arrays[f"{key}/pixels"], arrays[f"{key}/feature_mask"]
        assert pixels.shape == (3, 96, 96) and pixels.dtype == np.float32
        assert mask.shape == (96, 96) and sorted(np.unique(mask)) == list(range(9))
        assert arrays[f"{key}/logits"].shape == (6,)
        target = int(arrays[f"{key}/target"])
        assert image["target"]["index"] == target and image["segments"] == 9
        for method in METHODS:
            scores = arrays[f"{key}/{method}/scores"]
            attribution = arrays[f"{key}/{method}/attribution"]
            assert scores.shape == (9,) and attribution.shape == (96, 96)
            ranking = image["methods"][method]["ranking"]
            assert [row["segment"] for row in ranking] == list(np.argsort(-scores, kind="stable"))
            assert sum(row["area"] for row in ranking) == pytest.approx(1.0)
            _, means = segment_means(attribution, mask)
            np.testing.assert_allclose(scores, means.numpy(), rtol=1e-6)
        # the saved scores are what a direct API call on the saved pixels and segments gives
        x = torch.from_numpy(pixels)[None]
        segments = torch.from_numpy(mask)[None, None]
        _, direct = CTC(model).attribute(
            x, target=target, feature_mask=segments, return_feature_scores=True
        )
        np.testing.assert_allclose(
            arrays[f"{key}/ctc/scores"], direct.scores[0].numpy(), rtol=1e-5, atol=1e-6
        )
        ablation = FeatureAblation(model).attribute(x, target=target, feature_mask=segments)
        _, ablation_scores = segment_means(ablation[0, 0], segments)
        np.testing.assert_allclose(
            arrays[f"{key}/feature-ablation/scores"], ablation_scores.numpy(), rtol=1e-5, atol=1e-6
        )


def test_a_torchvision_model_keeps_the_aspect_ratio_and_names_imagenet_classes(
    photos, resnet18_file, tmp_path, capsys
):
    save = tmp_path / "run.npz"
    argv = ["explain", str(photos["wide"]), "--model", "resnet18", "--weights", str(resnet18_file)]
    argv += ["--resize", "32", "--crop", "none", "--method", "ctc", "gradcam", "integrative-cam"]
    argv += ["feature-ablation", "lime", *FAST, "--out", str(tmp_path / "f.png")]
    assert main([*argv, "--save", str(save)]) == 0
    text = capsys.readouterr().out
    assert "56x40 -> 44x32" in text  # a 56 x 40 picture is no longer squashed to a square
    categories = torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"]
    arrays, summary = load_saved(save)
    predicted = summary["images"][0]["predicted"]
    assert predicted["name"] == categories[predicted["index"]]
    assert f"predicted {predicted['index']} ({categories[predicted['index']]})" in text
    assert arrays["image0/pixels"].shape == (3, 32, 44)
    assert arrays["image0/logits"].shape == (1000,)
    assert summary["preprocessing"]["from"] == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    # the scores are those of the documented wiring: Normalize prepended to the network
    prep = ImagePreprocessing.from_weights(torchvision.models.ResNet18_Weights.DEFAULT)
    model = prep.wrap(zoo.load_torchvision("resnet18", resnet18_file))
    x = torch.from_numpy(arrays["image0/pixels"])[None]
    segments = torch.from_numpy(arrays["image0/feature_mask"])[None, None]
    target = int(arrays["image0/target"])
    _, direct = CTC(model).attribute(
        x, target=target, feature_mask=segments, return_feature_scores=True
    )
    np.testing.assert_allclose(
        arrays["image0/ctc/scores"], direct.scores[0].numpy(), rtol=1e-4, atol=1e-6
    )
    by_name = ["explain", str(photos["wide"]), "--model", "resnet18", "--weights"]
    by_name += [str(resnet18_file), "--resize", "32", "--target", categories[7], *FAST]
    assert main([*by_name, "--out", str(tmp_path / "g.png")]) == 0
    assert f"explaining target 7 ({categories[7]})" in capsys.readouterr().out


def test_the_progress_bar_moves_per_chunk_of_copies(photos, tmp_path, capsys):
    argv = ["explain", str(photos["square"]), "--segmenter", "grid", "--segments", "9"]
    argv += ["--bias-sharing", "reference", "--perturbations-per-eval", "4"]
    assert main([*argv, "--out", str(tmp_path / "f.png")]) == 0
    err = capsys.readouterr().err
    chunks = math.ceil(9 / 4)
    assert "CTC (reference): 100%" in err and f"{chunks}/{chunks}" in err


def test_methods_that_do_not_fit_the_model_are_one_line(photos, resnet18_file, tmp_path, capsys):
    out = ["--out", str(tmp_path / "f.png"), *FAST]
    argv = ["explain", str(photos["wide"]), "--model", "resnet18", "--weights"]
    assert main([*argv, str(resnet18_file), "--resize", "32", "--method", "explainer", *out]) == 2
    err = capsys.readouterr().err
    assert "--method explainer: resnet18 has no shipped Explainer" in err
    assert "give its file with --explainer FILE" in err
    # `explainer train` takes zoo families only: the way for your own model is Python's
    assert "train one for it in Python" in err and "trains for the zoo's models only" in err
    assert main(["explain", "--model", "vit", "--method", "gradcam", *out]) == 2
    assert "--method gradcam:" in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()


def test_version_and_help(capsys):
    from ctc_plugin import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"ctc-plugin {__version__}"
    with pytest.raises(SystemExit) as exit_:
        main(["explain", "--help"])
    help_text = capsys.readouterr().out
    assert exit_.value.code == 0
    for option in ["--method", "--device", "--save", "--resize", "--crop", "--top", *METHODS]:
        assert option in help_text


HELP_IMPORTS = """
import sys
from ctc_plugin.cli import main
for argv in (["--help"], ["explain", "--help"], ["demo", "--help"], ["zoo", "train", "--help"],
             ["explainer", "gate", "--help"], ["benchmark", "--help"], ["--version"]):
    try:
        main(argv)
    except SystemExit as exit_:
        assert exit_.code == 0, argv
heavy = sorted({name.split(".")[0] for name in sys.modules}
               & {"torch", "torchvision", "captum", "zennit", "numpy", "scipy", "matplotlib"})
assert not heavy, heavy
"""


def test_help_imports_no_heavy_module():
    done = subprocess.run(
        [sys.executable, "-c", HELP_IMPORTS],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: ctc-plugin" in done.stdout


def test_grad_cams_title_names_the_layer_of_the_users_network_not_of_the_wrapper():
    from ctc_plugin.commands.methods import Request, run_method
    from ctc_plugin.images import ImagePreprocessing

    network = torchvision.models.resnet18(num_classes=3).eval()
    model = ImagePreprocessing(mean=(0.5,) * 3, std=(0.25,) * 3).wrap(network)
    x = torch.rand(1, 3, 64, 64)  # layer4's map is 2 x 2: the last spatial one
    mask = torch.zeros(1, 1, 64, 64, dtype=torch.long)
    result = run_method("gradcam", Request(model, x, 0, mask, show_progress=False))
    assert result.title == "Grad-CAM (layer4)"  # not "1.layer4"


def test_explain_and_explain_dataset_take_each_others_spelling_of_methods_and_targets(tmp_path):
    """``explain --methods``, and ``explain-dataset --method ... --target`` as options of their
    own (not only through argparse's prefix matching, which a parser may turn off)."""
    from ctc_plugin.cli import build_parser

    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    parser = build_parser()
    args = parser.parse_args(["explain", str(image), "--methods", "ctc", "FeatureAblation"])
    assert args.methods == ["ctc", "feature-ablation"]
    args = parser.parse_args(
        ["explain-dataset", str(tmp_path), "--method", "gradcam", "--target", "1", "--out",
         str(tmp_path / "run")]
    )  # fmt: skip
    assert (args.methods, args.targets) == (["gradcam"], ["1"])
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    strings = {s for a in commands.choices["explain-dataset"]._actions for s in a.option_strings}
    assert {"--methods", "--method", "--targets", "--target"} <= strings
    assert {"--method", "--methods"} <= {
        s for a in commands.choices["explain"]._actions for s in a.option_strings
    }


@pytest.mark.parametrize("command", ["explain", "demo"])
def test_explain_and_demo_run_on_the_threads_asked_for(command, monkeypatch, tmp_path):
    """``--threads N`` as the other subcommands take it; torch's count is restored after."""
    from ctc_plugin.commands import explain as explain_module

    seen = []
    monkeypatch.setattr(
        explain_module, "explain", lambda args, **_: seen.append(torch.get_num_threads()) or 0
    )
    before = torch.get_num_threads()
    images = [str(tmp_path / "a.png")] if command == "explain" else []
    if images:
        Image.new("RGB", (8, 8)).save(images[0])
    assert main([command, *images, "--threads", "1"]) == 0
    assert main([command, *images]) == 0
    assert seen == [1, before] and torch.get_num_threads() == before


def single_logit() -> torch.nn.Module:
    """A binary classifier with one output (its logit), for ``--model module:callable``."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(2, 1),
    )  # fmt: skip


def test_a_single_logit_model_reports_the_sigmoid_not_a_softmax_of_one(tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
        image
    )
    argv = ["explain", str(image), "--model", f"{__name__}:single_logit", "--method", "gradcam",
            "--segmenter", "grid", "--segments", "4", "--out", str(tmp_path / "f.png"),
            "--save", str(tmp_path / "run.npz"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    saved = json.loads((tmp_path / "run.json").read_text())["images"][0]
    logit = saved["target"]["logit"]
    assert saved["predicted"]["probability"] == pytest.approx(1 / (1 + math.exp(-logit)))
    assert f"p={1 / (1 + math.exp(-logit)):.3f}" in text and "p=1.000" not in text
    # "predicted 0" was printed whatever p said: the one output is no class to predict
    assert f"one output, logit {logit:.3f}, sigmoid p=" in text and "predicted 0" not in text


def test_a_photo_explained_without_model_says_which_model_explains_it(tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.new("RGB", (24, 24)).save(image)
    quick = ["--method", "gradcam", "--segmenter", "grid", "--segments", "4", "--no-progress"]
    assert main(["explain", str(image), *quick, "--out", str(tmp_path / "f.png")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("note: no --model given: the zoo's resnet trained on the synthetic")
    given = ["explain", str(image), "--model", "resnet", *quick, "--out", str(tmp_path / "g.png")]
    assert main(given) == 0
    assert "no --model given" not in capsys.readouterr().out  # named: no note
    assert main(["explain", *quick, "--out", str(tmp_path / "h.png")]) == 0  # the bundled image
    assert "no --model given" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("target", "status", "expected"),
    [
        (" 2", 0, "explaining target 2 (triangle)"),
        ("Triangle", 0, "explaining target 2 (triangle)"),
        ("triangel", 2, "did you mean 'triangle'?"),
    ],
)
def test_targets_are_read_as_typed_loosely_and_misspelt_names_get_the_close_ones(
    tmp_path, capsys, target, status, expected
):
    quick = ["--method", "gradcam", "--segmenter", "grid", "--segments", "4", "--no-progress"]
    assert main(["explain", "--target", target, *quick, "--out", str(tmp_path / "f.png")]) == status
    captured = capsys.readouterr()
    assert expected in (captured.err if status else captured.out)


def test_the_benchmarks_ctc_variants_point_to_bias_sharing():
    from ctc_plugin.commands.explain_setup import method_name

    with pytest.raises(argparse.ArgumentTypeError, match="give --method ctc --bias-sharing none"):
        method_name("CTC-none")


def ends_in_softmax() -> torch.nn.Module:
    """A classifier returning probabilities, for ``--model module:callable``."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1),
    )  # fmt: skip


def test_a_model_ending_in_a_softmax_is_one_short_line_for_ctc(tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(image)
    argv = [
        "explain", str(image), "--model", f"{__name__}:ends_in_softmax", "--segmenter", "grid",
        "--segments", "4", "--out", str(tmp_path / "f.png"), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and len(error) < 400, error
    assert "CTC explains the logits before it: return the logits" in error
    assert "feature-ablation and lime take any model" in error


def test_a_method_that_cannot_explain_the_model_stops_before_the_others_run(
    tmp_path, capsys, monkeypatch
):
    """Grad-CAM on a vision transformer was refused after CTC had run on every segment."""
    from ctc_plugin.commands import methods

    segments_seen = []
    real = methods.run_method

    def recording(name, request):
        segments_seen.append((name, int(request.feature_mask.max()) + 1))
        return real(name, request)

    monkeypatch.setattr(methods, "run_method", recording)
    argv = ["explain", "--model", "vit", "--method", "ctc", "gradcam", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "x.png")]) == 2
    assert (
        "--method gradcam: the command's Grad-CAM is Captum's LayerGradCam"
        in capsys.readouterr().err
    )
    assert segments_seen == [("ctc", 2), ("gradcam", 2)]  # the trial on two halves only
    assert not (tmp_path / "x.png").exists()


def test_a_refused_method_stops_before_any_image_is_segmented(tmp_path, capsys, monkeypatch):
    """The trial ran after every image had been segmented (minutes with SAM)."""
    from ctc_plugin.commands import explain as explain_command

    segmented = []
    real = explain_command.segment_image
    monkeypatch.setattr(
        explain_command, "segment_image", lambda *a, **k: segmented.append(1) or real(*a, **k)
    )
    argv = ["explain", "--model", "vit", "--method", "gradcam", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "x.png")]) == 2
    assert "cannot put on the patch grid" in capsys.readouterr().err
    assert segmented == []


def test_a_folder_of_class_folders_given_as_an_image_points_to_explain_dataset(tmp_path, capsys):
    """Its images are in subfolders: it was told it holds no images."""
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "a.jpg")
    assert main(["explain", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "is a folder, not a file" in error and "explain-dataset" in error, error


def test_your_model_without_images_says_it_explains_the_bundled_sample(tmp_path, capsys):
    """Forgetting IMAGE explained the synthetic sample with your ImageNet model, unsaid."""
    quick = ["--method", "gradcam", "--segmenter", "grid", "--segments", "4", "--no-progress"]
    model = ["--model", "tests.cli.test_explain_cli:tiny_model"]
    assert main(["explain", *model, *quick, "--out", str(tmp_path / "f.png")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("note: no IMAGE given: tests.cli.test_explain_cli:tiny_model explains")
    assert main(["explain", "--model", "resnet", *quick, "--out", str(tmp_path / "g.png")]) == 0
    assert "no IMAGE given" not in capsys.readouterr().out  # a zoo model: its own sample


def tokens_only() -> torch.nn.Module:
    """Linear layers over pixel tokens with a running sum: CTC and Grad-CAM refuse it."""

    class CumulativeTokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = torch.relu(self.embed(x.flatten(2).transpose(1, 2)))
            return self.head((tokens * torch.cumsum(tokens, 1)).mean(1))

    torch.manual_seed(0)
    return CumulativeTokens().eval()


@pytest.mark.parametrize(
    ("methods", "expected"),
    [
        (["ctc", "lime"], "torch.cumsum .*; lime can: give --method lime$"),
        (
            ["ctc", "gradcam", "feature-ablation", "lime"],
            "torch.cumsum .*; gradcam refused it too \\(give each alone to see why\\); "
            "feature-ablation, lime can: give --method feature-ablation lime$",
        ),
        (["ctc"], "torch.cumsum .*How CTC works\\)$"),
        (
            ["gradcam"],
            "--method gradcam: the model has no submodule returning a spatial .*; use "
            "feature-ablation or lime \\(integrative-cam too where the model is a transformer "
            "whose blocks it knows; it needs convolutions otherwise\\)$",
        ),
        (  # was "use integrative-cam, feature-ablation or lime; integrative-cam refused it too"
            ["gradcam", "integrative-cam", "lime"],
            "; use feature-ablation or lime .*; integrative-cam refused it too .*; lime can",
        ),
    ],
)
def test_a_method_that_refuses_the_model_names_the_methods_that_can(
    tmp_path, capsys, methods, expected
):
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    argv = [
        "explain", str(image), "--model", f"{__name__}:tokens_only", "--segmenter", "grid",
        "--segments", "4", "--out", str(tmp_path / "f.png"), "--no-progress",
        "--method", *methods,
    ]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert re.search(expected, error), error
    assert not (tmp_path / "f.png").exists()
