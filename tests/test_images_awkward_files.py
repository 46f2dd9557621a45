"""Image files at the edges: folders, decompression bombs, 16-bit transparency, 32-bit values."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ctc_plugin.images import read_image


def test_a_folder_is_called_a_folder(tmp_path):
    folder = tmp_path / "photos.png"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="is a folder, not an image file"):
        read_image(folder)


def test_an_image_over_pillows_pixel_limit_says_how_to_raise_it(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1,200 pixels > twice the limit
    with pytest.raises(ValueError) as caught:
        read_image(path)
    message = str(caught.value)
    assert "too large to read safely" in message
    assert "MAX_IMAGE_PIXELS" in message
    assert "is the file complete" not in message


def test_the_transparent_gray_of_a_16_bit_png_is_white(tmp_path):
    gray = np.full((4, 5), 0x8000, np.uint16)
    gray[0, 0] = 7
    path = tmp_path / "gray16.png"
    Image.fromarray(gray).save(path, transparency=7)
    assert Image.open(path).mode == "I;16"
    image = read_image(path)
    assert image[:, 0, 0].tolist() == [255, 255, 255]
    assert image[:, 1, 1].tolist() == [128, 128, 128]


def test_a_32_bit_image_beyond_16_bits_is_refused_not_clipped(tmp_path):
    path = tmp_path / "counts.tif"
    Image.fromarray(np.full((4, 5), 70_000, np.int32)).save(path)
    with pytest.raises(ValueError, match=r"32-bit integer image .* outside the 16-bit range"):
        read_image(path)
    within = tmp_path / "within.tif"
    Image.fromarray(np.full((4, 5), 65_535, np.int32)).save(within)
    assert read_image(within).unique().tolist() == [255]


def test_the_transparent_colour_of_an_rgb_png_is_white(tmp_path):
    """RGB images were returned as stored: the colour key stayed blue, not white."""
    pixels = np.full((4, 5, 3), 90, np.uint8)
    pixels[0, 0] = (0, 0, 255)
    path = tmp_path / "keyed.png"
    Image.fromarray(pixels).save(path, transparency=(0, 0, 255))
    image = read_image(path)
    assert image[:, 0, 0].tolist() == [255, 255, 255]
    assert image[:, 1, 1].tolist() == [90, 90, 90]


def test_a_pil_image_is_turned_upright_as_its_file_is(tmp_path):
    """``prep(path)`` turned a phone photo upright, ``prep(Image.open(path))`` did not."""
    from ctc_plugin.images import ImagePreprocessing

    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to show
    Image.new("RGB", (60, 40), (200, 10, 10)).save(path, exif=exif)
    prepare = ImagePreprocessing()
    from_path = prepare(path)
    from_pil = prepare(Image.open(path))
    assert from_path.original_size == from_pil.original_size == (60, 40)


def test_paths_that_are_no_image_files_say_what_they_are(tmp_path):
    under = tmp_path / "photo.png"
    Image.new("RGB", (4, 4)).save(under)
    with pytest.raises(FileNotFoundError, match=r"photo.png is a file, not a folder"):
        read_image(under / "x.png")
    with pytest.raises(ValueError, match="not a regular file"):
        read_image("/dev/null")


def test_a_file_without_read_permission_is_a_permission_error(tmp_path, monkeypatch):
    """It was reported as "is the file complete and a PNG/JPEG?"."""
    path = tmp_path / "locked.png"
    Image.new("RGB", (4, 4)).save(path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(PermissionError, match="no permission to read the image file"):
        read_image(path)
