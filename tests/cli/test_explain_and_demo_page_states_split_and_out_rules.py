"""docs/datasets-and-zoo.md states demo's split rules and the --out refusal, as the commands do.

Before, the page said nothing of ``demo --model resnet-composite`` explaining the composite
sample, of a contradicting ``--split`` being refused, or of an ``--out`` naming an input image
being refused.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

from ctc_plugin.cli import main
from ctc_plugin.datasets import sample_path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "datasets-and-zoo.md"


def _section() -> str:
    text = PAGE.read_text()
    start = text.index("## The main job: `ctc-plugin explain` and `ctc-plugin demo`")
    end = text.find("\n## ", start + 1)  # the next top-level section, if any
    return " ".join(text[start : end if end > 0 else None].split())


def test_the_page_says_demo_follows_a_zoo_models_split(tmp_path, capsys):
    section = _section()
    assert "`demo --model resnet-composite` explains the composite sample" in section
    refused = re.search(r"\(`(demo --model resnet-composite --split shapes)`\) is refused", section)
    assert refused, "the page names the contradicting --split that is refused"
    out = tmp_path / "demo.png"
    assert main([*shlex.split(refused[1]), "--out", str(out)]) == 2
    assert "--split shapes" in capsys.readouterr().err and not out.exists()
    args = ["demo", "--model", "resnet-composite", "--segmenter", "grid", "--segments", "4"]
    assert main([*args, "--no-progress", "--out", str(out)]) == 0
    assert "samples/composite.png" in capsys.readouterr().out


def test_the_page_says_an_out_naming_an_input_image_is_refused(tmp_path, capsys, monkeypatch):
    section = _section()
    said = r"an `--out` that names one of the images to explain \(`([^`]+)`\) is refused"
    quoted = re.search(said, section)
    assert quoted, "the page says an --out naming an input image is refused"
    assert "naming a folder or one of the input images" in section
    monkeypatch.chdir(tmp_path)
    shutil.copy(sample_path("shapes", "image"), tmp_path / "photo.png")
    before = (tmp_path / "photo.png").read_bytes()
    words = shlex.split(quoted[1])
    assert words[0] == "explain" and main([*words, "--no-progress"]) == 2
    assert "the figure would replace it" in capsys.readouterr().err
    assert (tmp_path / "photo.png").read_bytes() == before
