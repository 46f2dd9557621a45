"""``explain --out`` naming one of the images to explain is refused: the figure would replace it."""

import shutil

from ctc_plugin.cli import main
from ctc_plugin.datasets import sample_path


def test_out_naming_the_input_image_is_refused_and_the_image_kept(tmp_path, capsys):
    image = tmp_path / "photo.png"
    shutil.copy(sample_path("shapes", "image"), image)
    before = image.read_bytes()
    status = main(
        ["explain", str(image), "--out", str(tmp_path / "." / "photo.png"), "--no-progress"]
    )
    assert status == 2
    assert image.read_bytes() == before
    error = capsys.readouterr().err.strip()
    assert error.startswith("ctc-plugin explain: error: argument --out:") and "\n" not in error
    assert "give another --out" in error


def test_out_through_a_link_to_an_input_image_is_refused(tmp_path, capsys):
    image = tmp_path / "photo.png"
    shutil.copy(sample_path("shapes", "image"), image)
    (tmp_path / "link.png").symlink_to(image)
    before = image.read_bytes()
    assert main(["explain", str(image), "--out", str(tmp_path / "link.png"), "--no-progress"]) == 2
    assert image.read_bytes() == before
