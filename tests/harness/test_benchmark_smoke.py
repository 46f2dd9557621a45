import csv
import math

import pytest
import torch

from ctc_plugin.cam.transformers import last_spatial_layer
from ctc_plugin.evaluation.localisation import pointing_game
from ctc_plugin.harness.benchmark import BenchmarkConfig, run_benchmark
from ctc_plugin.harness.methods import registry
from ctc_plugin.zoo import weights_path

needs_zoo = pytest.mark.skipif(
    not weights_path("resnet", "shapes").is_file(), reason="zoo weights not trained yet"
)


@needs_zoo
def test_two_methods_two_images_through_the_benchmark(tmp_path):
    config = BenchmarkConfig(
        families=("resnet",),
        splits=("shapes",),
        images=2,
        robustness_images=2,
        feature_sources=("oracle",),
        methods=("Saliency", "CTC-proportional"),
        curve_steps=4,
        sensitivity_samples=1,
        perturbations=(("uniform", "big"),),
    )
    summary = run_benchmark(config, tmp_path, show_progress=False)
    assert [row["method"] for row in summary] == ["Saliency", "CTC-proportional [oracle]"]
    for name in ("results.md", "results.csv", "per_image.csv", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    report = (tmp_path / "results.md").read_text()
    assert "## Failures\n\nNone." in report
    assert "### Standard errors of these means over the images" in report
    assert "| method | pointing | mass | rank | iou | f1 | deletion_px |" in report
    rows = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    assert len(rows) == 4
    # the pointing game column equals a direct computation on the method's own maps
    from ctc_plugin import zoo
    from ctc_plugin.datasets import ShapesDataset

    model = zoo.load("resnet", "shapes")
    data = ShapesDataset("shapes", size=2, seed=config.seed)
    images = torch.stack([data[i]["image"] for i in range(2)])
    labels = torch.tensor([data[i]["label"] for i in range(2)])
    evidence = torch.stack([data[i]["evidence"] for i in range(2)])
    maps = registry()["Saliency"].fn(model, images, labels, None)
    expected = pointing_game(maps, evidence)
    got = [float(r["pointing"]) for r in rows if r["method"] == "Saliency"]
    assert got == expected.tolist()
    for row in summary:
        assert math.isfinite(row["deletion_px"]) and math.isfinite(row["input_shift"])
        # two images, one perturbation: at least one of the two groups is populated
        assert math.isfinite(row["dist_kept"]) or math.isfinite(row["dist_changed"])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="feature sources"):
        BenchmarkConfig(feature_sources=("sam",))
    with pytest.raises(ValueError, match="robustness_images"):
        BenchmarkConfig(images=2, robustness_images=5)


def test_last_spatial_layer_is_the_last_feature_map():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )
    assert last_spatial_layer(model, torch.rand(1, 3, 8, 8)) is model[1]


@pytest.mark.slow
@needs_zoo
def test_quick_mode_command(tmp_path):
    from ctc_plugin.cli import main

    assert main(["benchmark", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "results.md").read_text()
    assert "CTC-reference [superpixel]" in text and "GradCAM" in text
    assert (tmp_path / "invariance_sensitivity.png").stat().st_size > 0


def test_command_reports_bad_input_in_one_line(tmp_path, capsys):
    from ctc_plugin.cli import main

    assert main(["benchmark", "--features", "sam", "--out", str(tmp_path)]) == 2
    assert "unknown --features source 'sam'" in capsys.readouterr().err
    assert main(["benchmark", "--families", "alexnet", "--out", str(tmp_path)]) == 2
    assert "--families: invalid choice: 'alexnet'" in capsys.readouterr().err
