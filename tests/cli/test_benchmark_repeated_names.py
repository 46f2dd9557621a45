"""A family, split, feature source or method named twice runs once (it would count twice)."""

import pytest

from ctc_plugin.cli import main
from ctc_plugin.harness import benchmark
from ctc_plugin.harness.benchmark import BenchmarkConfig


def test_repeated_names_on_the_command_line_run_once_in_the_order_given(
    tmp_path, monkeypatch, capsys
):
    seen = []
    monkeypatch.setattr(benchmark, "run_benchmark", lambda config, *a, **k: seen.append(config))
    args = ["benchmark", "--quick", "--out", str(tmp_path / "bench")]
    args += ["--families", "resnet", "vgg", "resnet", "--splits", "shapes", "shapes"]
    args += ["--features", "oracle", "oracle", "--methods", "Saliency", "Lime", "Saliency"]
    assert main(args) == 0
    (config,) = seen
    assert config.families == ("resnet", "vgg")
    assert config.splits == ("shapes",)
    assert config.feature_sources == ("oracle",)
    assert config.methods == ("Saliency", "Lime")


@pytest.mark.parametrize(
    "field",
    [
        {"families": ("resnet", "resnet")},
        {"splits": ("shapes", "composite", "shapes")},
        {"feature_sources": ("oracle", "oracle")},
        {"methods": ("Saliency", "Saliency")},
    ],
)
def test_configuration_with_a_repeated_name_is_refused(field):
    with pytest.raises(ValueError, match="more than once"):
        BenchmarkConfig(**field)
