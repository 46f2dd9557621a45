"""``ctc-plugin explain`` on awkward photos: panoramas, sizes a model or Explainer cannot take.

Found by the "your own model on your own photos" audit; each test failed before its fix.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ctc_plugin.cli import main

FAST = ["--segmenter", "grid", "--segments", "4", "--no-progress"]


def save_photo(path, height: int, width: int):
    """A blue photo with a red block at the right end."""
    array = np.zeros((height, width, 3), np.uint8)
    array[..., 2] = 180
    array[:, -max(1, width // 8) :] = (230, 20, 20)
    Image.fromarray(array).save(path)
    return path


def test_a_panorama_gives_a_figure_of_a_readable_size(tmp_path, capsys):
    photo = save_photo(tmp_path / "panorama.png", 10, 400)  # 40:1
    out = tmp_path / "fig.png"
    argv = ["explain", str(photo), "--model", "tests.cli.test_explain_cli:tiny_model"]
    argv += ["--resize", "10", "--crop", "none", *FAST, "--out", str(out)]
    assert main(argv) == 0
    assert "400x10 -> 400x10" in capsys.readouterr().out
    width, height = Image.open(out).size
    assert width <= 4000 and height >= 300  # was 28960 x 400: titles unreadable, a strip


def test_every_image_is_classified_before_any_method_runs(tmp_path, capsys, methods_run):
    square = save_photo(tmp_path / "square.png", 96, 96)
    wide = save_photo(tmp_path / "wide.png", 40, 56)  # with --crop none: 134 x 96, not 96 x 96
    argv = ["explain", str(square), str(wide), "--model", "vit", "--crop", "none", *FAST]
    argv += ["--out", str(tmp_path / "fig.png")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "vit cannot take 134x96 images" in error and len(error.splitlines()) == 1
    assert "got 134x96 (width x height) images" in error  # the model's own words agree
    assert methods_run == []  # was: CTC ran on square.png first, then the error


def test_an_image_the_explainer_cannot_take_is_refused_before_any_method_runs(
    tmp_path, capsys, methods_run
):
    wide = save_photo(tmp_path / "wide.png", 40, 56)
    argv = ["explain", str(wide), "--model", "resnet", "--crop", "none", *FAST]
    argv += ["--method", "ctc", "explainer", "--out", str(tmp_path / "fig.png")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("ctc-plugin explain: error: --method explainer: ")
    assert str(wide) in error and "134x96" in error and "--resize 96 --crop 96" in error
    assert methods_run == []  # was: CTC ran first, then "resize the inputs to the training size"


def test_the_explainer_help_shows_no_docstring_markup(capsys):
    with pytest.raises(SystemExit):
        main(["explainer", "--help"])
    text = capsys.readouterr().out
    assert "ctc-plugin explainer train / gate" in text and "``" not in text
