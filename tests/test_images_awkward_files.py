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
