"""``explain-dataset shapes:composite`` explains with the composite weights, as ``demo`` does.

Before, the default ``--model resnet`` explained the composite images with the shapes model
(six classes, trained on other images).
"""

import json

from ctc_plugin.cli import main
from ctc_plugin.runs import read_results

RUN = ["--images", "2", "--methods", "ctc", "--segmenter", "grid", "--segments", "4"]
RUN += ["--no-progress"]


def test_the_default_model_of_the_composite_images_is_the_composite_one(tmp_path):
    out = tmp_path / "run"
    assert main(["explain-dataset", "shapes:composite", *RUN, "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["model"] == "resnet-composite"
    assert max(read_results(out).column("predicted").to_pylist()) < 4  # the composite classes


def test_a_zoo_model_of_the_other_split_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["explain-dataset", "shapes", *RUN, "--model", "resnet-composite"]
    assert main([*argv, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "--model resnet-composite is trained on the composite" in error
    assert "SOURCE shapes:composite" in error
    assert not out.exists()
