"""ctc_plugin.images: aspect ratio, crops, normalisation (torchvision weights or mean/std),
EXIF orientation and every image mode read as the RGB image it shows."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from ctc_plugin.images import (
    ImagePreprocessing,
    Normalize,
    PreparedImage,
    load_image,
    read_image,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def picture(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(
        np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8)
    )


# ---------------------------------------------------------------------- sizes
@settings(max_examples=25, deadline=None)
@given(height=st.integers(8, 90), width=st.integers(8, 90), side=st.integers(4, 40))
def test_resize_sets_the_shorter_side_and_keeps_the_aspect_ratio(height, width, side):
    image = ImagePreprocessing(resize=side)(picture(height, width))
    out_height, out_width = image.size
    assert min(out_height, out_width) == side
    # the longer side follows the ratio (torchvision truncates it to an int)
    expected = int(side * max(height, width) / min(height, width))
    assert max(out_height, out_width) == expected
    if height == width:
        assert out_height == out_width == side
    assert (out_height >= out_width) == (height >= width) or height == width


@pytest.mark.parametrize(("height", "width"), [(48, 64), (64, 48), (40, 40), (30, 91)])
def test_centre_crop_cuts_the_middle_of_the_resized_image(height, width):
    source = picture(height, width)
    whole = ImagePreprocessing(resize=24)(source).pixels[0]
    cropped = ImagePreprocessing(resize=24, crop=16)(source).pixels[0]
    assert cropped.shape == (3, 16, 16)
    top = int(round((whole.shape[1] - 16) / 2.0))
    left = int(round((whole.shape[2] - 16) / 2.0))
    torch.testing.assert_close(cropped, whole[:, top : top + 16, left : left + 16])
    rectangle = ImagePreprocessing(resize=24, crop=(12, 20))(source)
    assert rectangle.size == (12, 20)


def test_no_resize_and_no_crop_keeps_the_pixels():
    source = picture(13, 17)
    image = ImagePreprocessing()(source)
    torch.testing.assert_close(image.pixels[0], source.float() / 255)
    torch.testing.assert_close(image.normalized, image.pixels)
    assert image.original_size is None and image.size == (13, 17)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"resize": 100, "crop": 224}, "make resize at least the crop size"),
        ({"resize": 0}, "resize must be a positive"),
        ({"crop": (3, 0)}, "crop must be"),
        ({"crop": 2.5}, "crop must be"),
        ({"mean": MEAN}, "give both mean= and std="),
        ({"mean": (0.5, 0.5), "std": (0.2, 0.2)}, "3 values"),
        ({"mean": MEAN, "std": (0.2, 0.0, 0.2)}, "std must be positive"),
        ({"interpolation": "lanczos"}, "interpolation must be"),
    ],
)
def test_impossible_settings_are_refused_when_made(options, message):
    with pytest.raises(ValueError, match=message):
        ImagePreprocessing(**options)


def test_a_crop_larger_than_the_image_is_refused_not_padded():
    with pytest.raises(ValueError, match="crop 32x32 is larger than the 20x30 image"):
        ImagePreprocessing(crop=32)(picture(20, 30))


# ---------------------------------------------------------------------- normalisation
@pytest.mark.parametrize(
    "weights",
    [
        tvm.ResNet50_Weights.IMAGENET1K_V2,  # resize 232, crop 224, bilinear
        tvm.Inception_V3_Weights.IMAGENET1K_V1,  # resize 342, crop 299
        tvm.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1,  # resize 384, crop 384, bicubic
        tvm.EfficientNet_B0_Weights.IMAGENET1K_V1,  # bicubic
    ],
)
def test_from_weights_gives_exactly_torchvisions_own_preprocessing(weights):
    prep = ImagePreprocessing.from_weights(weights)
    source = picture(300, 420, seed=3)
    image = prep(source)
    expected = weights.transforms()(source)
    torch.testing.assert_close(image.normalized[0], expected, rtol=0, atol=1e-6)
    assert prep.mean == tuple(weights.transforms().mean)
    # the pixels are the same image before normalisation
    torch.testing.assert_close(prep.normalize(image.pixels[0]), image.normalized[0])


def test_weights_can_be_named_or_given_as_their_enum_class():
    member = ImagePreprocessing.from_weights(tvm.ResNet18_Weights.IMAGENET1K_V1)
    assert ImagePreprocessing.from_weights("ResNet18_Weights.IMAGENET1K_V1") == member
    assert ImagePreprocessing.from_weights(tvm.ResNet18_Weights) == member  # its DEFAULT
    assert (
        ImagePreprocessing.from_weights(tvm.ResNet18_Weights.IMAGENET1K_V1.transforms()) == member
    )
    assert (member.resize, member.crop, member.interpolation) == (256, 224, "bilinear")
    whole = ImagePreprocessing.from_weights(tvm.ResNet18_Weights.IMAGENET1K_V1, crop=None)
    assert whole.crop is None and whole.mean == member.mean
    with pytest.raises(ValueError, match="unknown torchvision weights"):
        ImagePreprocessing.from_weights("ResNet18_Weights.NOPE")
    with pytest.raises(ValueError, match="no image-classification preprocessing"):
        ImagePreprocessing.from_weights(object())
    with pytest.raises(TypeError, match="unknown preprocessing fields"):
        ImagePreprocessing.from_weights(tvm.ResNet18_Weights, size=3)


@pytest.mark.parametrize(
    ("mean", "std"), [(MEAN, STD), ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), ((0, 0.1, 1), (1, 2, 3))]
)
def test_the_wrapped_model_on_pixels_equals_the_model_on_normalized_input(mean, std):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    ).eval()
    prep = ImagePreprocessing(resize=20, mean=mean, std=std)
    image = prep(picture(30, 45, seed=1))
    expected = (image.pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(image.normalized, expected)
    wrapped = prep.wrap(model)
    assert isinstance(wrapped[0], Normalize) and wrapped[1] is model and not wrapped.training
    torch.testing.assert_close(wrapped(image.pixels), model(image.normalized))
    assert ImagePreprocessing(resize=20).wrap(model) is model  # nothing to prepend


def test_load_image_shortcut_matches_the_preprocessing_object(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(picture(48, 64).permute(1, 2, 0).numpy()).save(path)
    image = load_image(path, 32, mean=MEAN, std=STD)
    assert isinstance(image, PreparedImage)
    assert image.size == (32, 42) and image.original_size == (48, 64)
    same = ImagePreprocessing(resize=32, mean=MEAN, std=STD)(path)
    torch.testing.assert_close(image.normalized, same.normalized)
    by_weights = load_image(path, weights="ResNet18_Weights.IMAGENET1K_V1", size=40, crop=None)
    assert by_weights.size == (40, 53) and by_weights.preprocessing.mean == MEAN


def test_images_from_pil_and_tensors():
    source = picture(10, 14)
    pil = Image.fromarray(source.permute(1, 2, 0).numpy())
    prep = ImagePreprocessing()
    torch.testing.assert_close(prep(pil).pixels, prep(source).pixels)
    torch.testing.assert_close(prep(source.float() / 255).pixels, prep(source[None]).pixels)
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\]"):
        prep(source.float())
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        prep(source[:2])
    with pytest.raises(TypeError, match="file path, a PIL image"):
        prep(source.numpy())


def test_normalize_module_checks_its_statistics():
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize(MEAN, (0.2, -0.1, 0.2))
    with pytest.raises(ValueError, match="one value per channel"):
        Normalize(MEAN, (0.2,))
    assert "mean=(0.485" in repr(Normalize(MEAN, STD))


# ---------------------------------------------------------------------- files
def marked(height: int = 30, width: int = 40) -> np.ndarray:
    """Blue, with a red block in the top-left corner (to see where rotations take it)."""
    array = np.zeros((height, width, 3), np.uint8)
    array[..., 2] = 200
    array[:8, :8] = (230, 20, 20)
    return array


@pytest.mark.parametrize(
    ("orientation", "shape", "corner"),
    [
        (1, (30, 40), (0, 0)),  # as stored
        (3, (30, 40), (-1, -1)),  # rotated 180 degrees
        (6, (40, 30), (0, -1)),  # to be rotated 90 degrees clockwise
        (8, (40, 30), (-1, 0)),  # to be rotated 90 degrees counter-clockwise
        (2, (30, 40), (0, -1)),  # mirrored
    ],
)
def test_the_exif_orientation_of_a_jpeg_is_applied(tmp_path, orientation, shape, corner):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(marked()).save(path, exif=exif, quality=95)
    image = read_image(path)
    assert tuple(image.shape[1:]) == shape
    row = 2 if corner[0] == 0 else shape[0] - 3
    col = 2 if corner[1] == 0 else shape[1] - 3
    np.testing.assert_allclose(image[:, row, col].numpy(), (230, 20, 20), atol=30)
    prepared = load_image(path, 15)
    assert min(prepared.size) == 15 and prepared.original_size == shape


def gray_scene() -> np.ndarray:
    array = np.full((24, 24), 40, np.uint8)
    array[6:18, 6:18] = 200
    return array


@pytest.mark.parametrize(
    ("kind", "centre", "corner"),
    [
        ("L", (200,) * 3, (40,) * 3),
        ("I;16", (200,) * 3, (40,) * 3),  # 16-bit grayscale, scaled to 8 bits
        ("RGBA", (230, 20, 20), (255, 255, 255)),  # transparent corner: white
        ("LA", (200,) * 3, (255,) * 3),
        ("P", (230, 20, 20), (0, 0, 200)),
        ("P-transparent", (230, 20, 20), (255, 255, 255)),
    ],
)
def test_every_mode_is_read_as_the_rgb_image_it_shows(tmp_path, kind, centre, corner):
    gray = Image.fromarray(gray_scene())
    colour = np.zeros((24, 24, 3), np.uint8)
    colour[..., 2] = 200
    colour[6:18, 6:18] = (230, 20, 20)
    rgb = Image.fromarray(colour)
    opaque = Image.fromarray(np.where(gray_scene() > 100, 255, 0).astype(np.uint8))
    path = tmp_path / "image.png"
    if kind == "L":
        gray.save(path)
    elif kind == "I;16":
        Image.fromarray(gray_scene().astype(np.uint16) * 257).save(path)
    elif kind == "RGBA":
        Image.merge("RGBA", (*rgb.split(), opaque)).save(path)
    elif kind == "LA":
        Image.merge("LA", (gray, opaque)).save(path)
    else:
        palette = rgb.quantize(4)
        extra = {"transparency": int(np.asarray(palette)[0, 0])} if kind == "P-transparent" else {}
        palette.save(path, **extra)
    pixels = load_image(path).pixels[0].permute(1, 2, 0).numpy() * 255
    np.testing.assert_allclose(pixels[12, 12], centre, atol=2)
    np.testing.assert_allclose(pixels[1, 1], corner, atol=2)


def test_files_that_are_no_usable_image_say_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read .* as an image"):
        read_image(tmp_path / "text.png")
    Image.new("F", (4, 4)).save(tmp_path / "float.tiff")
    with pytest.raises(ValueError, match="floating-point image"):
        load_image(tmp_path / "float.tiff")


@pytest.mark.parametrize(
    ("shape", "fix"), [((2, 16, 16, 3), "x.permute(0, 3, 1, 2)"), ((2, 4, 16, 16), "x[:, :3]")]
)
def test_normalize_refuses_another_channel_count_with_its_fix_for_every_method(shape, fix):
    from ctc_plugin import CTC, IntegrativeCAM, zoo

    model = zoo.load("resnet")
    x = torch.rand(*shape)
    for run in (
        lambda: model(x),
        lambda: IntegrativeCAM(model).attribute(x, 0),
        lambda: CTC(model).attribute(x, 0, feature_mask=torch.zeros(1, 1, *shape[-2:]).long()),
    ):
        with pytest.raises(ValueError, match=re.escape(fix)):
            run()


def test_normalize_takes_one_channel_as_gray():
    from ctc_plugin.images import Normalize

    gray = torch.rand(2, 1, 4, 4)
    normalize = Normalize((0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    torch.testing.assert_close(normalize(gray), normalize(gray.expand(-1, 3, -1, -1)))
    one_value = Normalize((0.5,), (0.25,))  # the same statistics for every channel
    rgb = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(one_value(rgb), (rgb - 0.5) / 0.25)
    with pytest.raises(ValueError, match="add the batch dim"):
        one_value(rgb[0])  # (3, H, W) would broadcast to a batch of one without a word


def test_a_mean_on_the_0_to_255_scale_is_refused_with_the_values_to_give(tmp_path, capsys):
    """ImageNet's statistics as 8-bit values (124, 116, 104) would shift every pixel by ~120."""
    message = r"divide mean and std by 255: mean=\(0\.486, 0\.455, 0\.408\), std=\(0\.227, "
    with pytest.raises(ValueError, match=message):
        ImagePreprocessing(mean=(124, 116, 104), std=(58, 57, 57))
    assert ImagePreprocessing(mean=(1.0, 0.5, 0.5), std=(1.0, 1.0, 1.0)).mean == (1.0, 0.5, 0.5)
    from ctc_plugin.cli import main

    image = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(image)
    argv = ["explain", str(image), "--mean", "124", "116", "104", "--std", "58", "57", "57"]
    assert main(argv) == 2
    assert (
        "argument --mean: mean (124.0, 116.0, 104.0) is on the 0..255 scale"
        in capsys.readouterr().err
    )
