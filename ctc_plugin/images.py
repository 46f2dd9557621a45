"""Images in: read a photo, keep its aspect ratio, and know the model's normalisation.

A classifier usually wants normalised input (``(x - mean) / std``) while a segmenter, a figure and a
pixel baseline want the picture itself, in [0, 1].
[`ImagePreprocessing`][ctc_plugin.images.ImagePreprocessing] holds both halves in one place and
gives back both tensors, so they are never wired twice:

    from torchvision.models import ResNet50_Weights, resnet50
    from ctc_plugin import CTC
    from ctc_plugin.images import ImagePreprocessing

    weights = ResNet50_Weights.IMAGENET1K_V2            # only its metadata is read: no download
    prep = ImagePreprocessing.from_weights(weights)      # resize 232, centre crop 224, mean, std
    image = prep("photo.jpg")                            # PreparedImage: .pixels and .normalized
    model = prep.wrap(resnet50().eval())                 # Normalize -> ResNet: takes pixels
    attributions = CTC(model).attribute(image.pixels, target=None)

The recommended wiring is the one above: prepend the normalisation to the model
([`ImagePreprocessing.wrap`][ctc_plugin.images.ImagePreprocessing.wrap]) and give every method
``image.pixels``. Then the segmenter segments the picture, Captum baselines and masked-out segments
are pixel values (``0`` is black), and figures show the input the scores refer to. If you keep the
model as it is, feed it ``image.normalized`` and tell the segmenter how the input was normalised
(``SuperpixelSegmenter(mean=prep.mean, std=prep.std)``): the scores are the same, but a baseline of
``0`` then means the mean colour.

Files are decoded with Pillow (``PIL.Image.open``), as torchvision's ``ImageFolder`` does, with the
EXIF orientation applied (``ImageOps.exif_transpose``), and every mode is read as the RGB image it
shows ([`to_rgb`][ctc_plugin.images.to_rgb]). ``torchvision.io.decode_image`` was tried first and
left aside: it reads palette PNGs as palette indices (``ImageReadMode.UNCHANGED``) or with shifted
channels (``RGB_ALPHA``), and reads no TIFF or BMP files. Resizing and cropping are torchvision's
(``torchvision.transforms.functional``), in the order and with the options of a weights enum's
``transforms()``, so
[`ImagePreprocessing.from_weights`][ctc_plugin.images.ImagePreprocessing.from_weights] gives exactly
the tensor torchvision's own preprocessing gives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ctc_plugin.inputs import check_inputs, is_integer
from ctc_plugin.module_paths import WrappedModel

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

__all__ = [
    "ImagePreprocessing",
    "Normalize",
    "PreparedImage",
    "load_image",
    "read_image",
    "to_rgb",
]

#: Interpolation modes a resize may use (torchvision's ``InterpolationMode`` names, lower case).
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")

#: Pillow modes holding an alpha channel (``P`` images may too: a ``transparency`` entry).
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")

#: Integer grayscale modes read as 16-bit values (16-bit PNGs open as ``I;16``, or ``I`` in
#: older Pillow versions).
WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


class _Unset:
    """The default of an argument that was not given (``None`` means something there)."""

    def __repr__(self) -> str:
        return "<the weights' own, else None>"


UNSET = _Unset()


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` with the statistics stored as buffers.

    Prepend it to a classifier that expects normalised input, so that the model takes pixels in
    [0, 1]: ``nn.Sequential(Normalize(mean, std), model)`` (what
    [`ImagePreprocessing.wrap`][ctc_plugin.images.ImagePreprocessing.wrap] builds). CTC treats the
    shift as a bias shared among the features, like every other input-independent term.

    Args:
        mean: Per-channel mean (one value per input channel).
        std: Per-channel standard deviation (positive).

    Raises:
        ValueError: ``mean`` and ``std`` differ in length, or a ``std`` is not positive.
    """

    def __init__(self, mean: Sequence[float] = (0.5,) * 3, std: Sequence[float] = (0.25,) * 3):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {mean} and {std}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer(
            "mean", torch.tensor(tuple(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(tuple(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` (N, C, H, W); one channel is taken as gray (the same on every channel).

        Raises:
            ValueError: A batch of another channel count (RGBA, channels-last (N, H, W, C)),
                with its fix, before torch's broadcasting error.
        """
        channels = self.mean.shape[1]  # one value: the same for every channel
        if x.dim() != 4 or (channels > 1 and x.shape[1] not in (1, channels)):
            known = channels if channels > 1 else None
            check_inputs(x, images=True, channels=known, finite=False, name="the images")
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        """Show the statistics in ``repr``."""
        mean = tuple(round(v, 4) for v in self.mean.flatten().tolist())
        std = tuple(round(v, 4) for v in self.std.flatten().tolist())
        return f"mean={mean}, std={std}"


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for a classifier: the pixels and the model input, from one preprocessing.

    Attributes:
        pixels: ``(1, 3, H, W)`` float32 RGB in [0, 1]: what segmenters, figures and a model wrapped
            with [`ImagePreprocessing.wrap`][ctc_plugin.images.ImagePreprocessing.wrap] take.
        normalized: ``(1, 3, H, W)`` float32, ``(pixels - mean) / std`` (the pixels themselves
            when the preprocessing has no ``mean``/``std``): what the unwrapped model takes.
        original_size: ``(height, width)`` of the image as read, after its EXIF rotation and
            before resizing (``None`` when the image came in as a tensor).
        preprocessing: The [`ImagePreprocessing`][ctc_plugin.images.ImagePreprocessing] that made
            it.
    """

    pixels: Tensor
    normalized: Tensor
    original_size: tuple[int, int] | None
    preprocessing: ImagePreprocessing

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the prepared image."""
        return int(self.pixels.shape[-2]), int(self.pixels.shape[-1])

    def to(self, device: torch.device | str) -> PreparedImage:
        """The same image with both tensors on ``device``."""
        return dataclasses.replace(
            self, pixels=self.pixels.to(device), normalized=self.normalized.to(device)
        )


@dataclass(frozen=True)
class ImagePreprocessing:
    """How an image becomes a model input: shorter side, centre crop, normalisation.

    The aspect ratio is always kept: ``resize`` scales the image so that its *shorter* side has that
    many pixels (torchvision's ``Resize(int)``), and ``crop`` then cuts the centre ``crop x crop``
    (or ``(height, width)``) region, as torchvision's evaluation transforms do. Leave either as
    ``None`` to skip it. ``mean``/``std`` describe the normalisation the model expects;
    [`PreparedImage`][ctc_plugin.images.PreparedImage] carries both the pixels and the normalised
    tensor.

    Called on an image (a file path, a PIL image, or a ``(3, H, W)`` / ``(1, 3, H, W)`` tensor:
    ``uint8`` in 0..255 or float in [0, 1]) it returns a
    [`PreparedImage`][ctc_plugin.images.PreparedImage]. A file path and a PIL image are both
    turned upright by their EXIF orientation tag, as phone photos need (``Image.open(path)``
    gives the same as ``path``); a PIL image you turned yourself with ``rotate`` or
    ``transpose`` keeps its tag and would be turned again: turn it with
    ``PIL.ImageOps.exif_transpose``, which drops the tag, or give its path.

    Args:
        resize: Length in pixels of the shorter side after resizing; ``None`` keeps the size.
        crop: Side of the centred square to cut (or ``(height, width)``); ``None`` keeps the
            whole (resized) image. With ``resize`` it must be at most ``resize``.
        mean: Per-channel mean the model's input is normalised with (3 values), or ``None``.
        std: Per-channel standard deviation (3 positive values); give both or neither.
        interpolation: ``"bilinear"`` (default), ``"bicubic"``, ``"nearest"`` or
            ``"nearest-exact"``; resizing is antialiased, as in torchvision's transforms.

    Examples:
        >>> prep = ImagePreprocessing(resize=224, mean=(0.485, 0.456, 0.406),
        ...                           std=(0.229, 0.224, 0.225))
        >>> image = prep("photo.jpg")        # a 640x480 photo -> pixels (1, 3, 224, 298)
    """

    resize: int | None = None
    crop: int | tuple[int, int] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.resize is not None and not _positive_int(self.resize):
            raise ValueError(f"resize must be a positive whole number or None, got {self.resize!r}")
        crop = self.crop
        if isinstance(crop, Sequence) and not isinstance(crop, str):
            crop = tuple(crop)
            if len(crop) != 2 or not all(_positive_int(c) for c in crop):
                raise ValueError(f"crop must be a side or (height, width), got {self.crop!r}")
            object.__setattr__(self, "crop", (int(crop[0]), int(crop[1])))
        elif crop is not None and not _positive_int(crop):
            raise ValueError(f"crop must be a positive whole number or None, got {self.crop!r}")
        if (
            self.resize is not None
            and self.crop is not None
            and max(self._crop_size()) > self.resize
        ):
            raise ValueError(
                f"crop {self.crop} does not fit in an image whose shorter side is resized to "
                f"{self.resize}; make resize at least the crop size"
            )
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean= and std= (the model's normalisation), or neither")
        if self.mean is not None and self.std is not None:
            mean = tuple(float(v) for v in self.mean)
            std = tuple(float(v) for v in self.std)
            if len(mean) != 3 or len(std) != 3:
                raise ValueError(f"mean and std need 3 values (R, G, B), got {mean} and {std}")
            if not all(np.isfinite(mean + std)) or any(s <= 0 for s in std):
                raise ValueError(f"std must be positive and both finite, got mean={mean} std={std}")
            # the 0..255 scale of 8-bit images, (255x - m) / s for x in [0, 1]: both above 1
            # (a mean above 1 alone is a shift to negative values, EfficientNet's [-1, 0])
            if max(mean) > 1 and max(std) > 1:
                scaled = ", ".join(f"{v / 255:.3f}" for v in mean)
                spread = ", ".join(f"{v / 255:.3f}" for v in std)
                raise ValueError(
                    f"mean {mean} is on the 0..255 scale, and the pixels are in [0, 1]: divide "
                    f"mean and std by 255: mean=({scaled}), std=({spread})"
                )
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_weights(cls, weights: Any, **overrides: Any) -> ImagePreprocessing:
        """The preprocessing a torchvision weights enum describes (its own ``transforms()``).

        Reads the resize, crop, mean, std and interpolation of ``weights.transforms()``;
        nothing is downloaded. ``overrides`` replace fields, e.g. ``crop=None`` to keep the
        whole image, or ``resize=224``.

        Args:
            weights: A weights enum member (``ResNet50_Weights.IMAGENET1K_V2``), its name as a
                string (``"ResNet50_Weights.IMAGENET1K_V2"``), a weights enum class (its
                ``DEFAULT`` is used), or the transform object ``weights.transforms()`` returns.
            **overrides: Fields of [`ImagePreprocessing`][ctc_plugin.images.ImagePreprocessing] to
                set instead.

        Raises:
            ValueError: If ``weights`` describes no image-classification transform.
        """
        transform = _classification_transform(weights)
        values = {
            "resize": _single(transform.resize_size),
            "crop": _single(transform.crop_size),
            "mean": tuple(transform.mean),
            "std": tuple(transform.std),
            "interpolation": transform.interpolation.value,
        }
        return cls(**values).replace(**overrides)

    def replace(self, **changes: Any) -> ImagePreprocessing:
        """A copy with some fields changed (and checked again).

        A new ``resize`` without a new ``crop`` keeps the crop where it fits and shrinks it to
        ``resize`` where it does not (``resize=64`` on a 224 crop gives a 64 crop).

        Raises:
            TypeError: For a name that is no field.
            ValueError: For settings that do not fit (see the class).
        """
        unknown = set(changes) - {field.name for field in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown preprocessing fields {sorted(unknown)}")
        resize = changes.get("resize")
        if resize is not None and "crop" not in changes and self.crop is not None:
            height, width = self._crop_size()
            if max(height, width) > resize:
                scale = resize / max(height, width)
                shrunk = (max(1, int(height * scale)), max(1, int(width * scale)))
                changes["crop"] = shrunk[0] if isinstance(self.crop, int) else shrunk
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ the model side
    def normalization(self) -> nn.Module:
        """The model-side half: `Normalize` with ``mean``/``std``, or ``nn.Identity``."""
        if self.mean is None or self.std is None:
            return nn.Identity()
        return Normalize(self.mean, self.std)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``nn.Sequential(Normalize(mean, std), model)``: a model that takes pixels in [0, 1].

        Returns ``model`` itself when there is no normalisation. The normalisation follows the
        model's device and dtype (taken from its first parameter or buffer) and its mode; the
        model's own modules keep theirs. The ``nn.Sequential`` is a
        [`WrappedModel`][ctc_plugin.module_paths.WrappedModel]: the methods' messages name the
        model's modules by its own paths (``features.3``, not ``1.features.3``).
        """
        if self.mean is None:
            return model
        normalize = self.normalization()
        reference = next(iter([*model.parameters(), *model.buffers()]), None)
        if reference is not None:
            normalize = normalize.to(device=reference.device, dtype=reference.dtype)
        wrapped = WrappedModel(normalize, model)
        wrapped.training = model.training  # the model's own modes stay as they are
        normalize.train(model.training)
        return wrapped

    def normalize(self, pixels: Tensor) -> Tensor:
        """``(pixels - mean) / std`` per channel (``pixels`` itself without a normalisation)."""
        if self.mean is None or self.std is None:
            return pixels
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
        return (pixels - mean) / std

    # ------------------------------------------------------------------ the image side
    def __call__(self, image: str | Path | PILImage.Image | Tensor) -> PreparedImage:
        """Prepare one image (see the class docstring for what ``image`` may be)."""
        original_size: tuple[int, int] | None = None
        if isinstance(image, (str, Path)):
            tensor = read_image(image)
            original_size = (int(tensor.shape[-2]), int(tensor.shape[-1]))
        elif isinstance(image, Tensor):
            tensor = _image_tensor(image)
        elif _is_pil_image(image):
            from PIL import ImageOps

            # upright as a file path is read (an image already turned has no orientation left)
            upright = ImageOps.exif_transpose(image) or image
            tensor = _pil_to_tensor(to_rgb(upright))
            original_size = (int(tensor.shape[-2]), int(tensor.shape[-1]))
        else:
            raise TypeError(
                "expected a file path, a PIL image or a (3, H, W) tensor, got "
                f"{type(image).__name__}"
            )
        pixels = self.transform(tensor)
        return PreparedImage(
            pixels=pixels[None],
            normalized=self.normalize(pixels)[None],
            original_size=original_size,
            preprocessing=self,
        )

    def transform(self, image: Tensor) -> Tensor:
        """Resize and crop a ``(3, H, W)`` image; return float32 pixels in [0, 1].

        ``uint8`` images are resized and cropped before they become floats, as torchvision's
        ``ImageClassification`` transform does.

        Raises:
            ValueError: If the crop is larger than the (resized) image.
        """
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        if self.resize is not None:
            image = TF.resize(
                image,
                [self.resize],
                interpolation=InterpolationMode(self.interpolation),
                antialias=True,
            )
        if self.crop is not None:
            height, width = image.shape[-2:]
            crop_height, crop_width = self._crop_size()
            if crop_height > height or crop_width > width:
                raise ValueError(
                    f"crop {crop_height}x{crop_width} is larger than the {height}x{width} image; "
                    "choose a smaller crop or a larger resize"
                )
            image = TF.center_crop(image, [crop_height, crop_width])
        if image.dtype == torch.uint8:
            return image.to(torch.float32) / 255.0
        return image.to(torch.float32).clamp(0.0, 1.0)

    def describe(self) -> str:
        """A short description, e.g. ``resize 232, centre crop 224x224, mean/std (0.485, ...)``."""
        parts = [f"shorter side {self.resize}" if self.resize else "original size"]
        if self.crop is not None:
            crop_height, crop_width = self._crop_size()
            parts.append(f"centre crop {crop_height}x{crop_width}")
        if self.mean is not None:
            parts.append(f"mean {_rounded(self.mean)} std {_rounded(self.std)}")
        return ", ".join(parts)

    def _crop_size(self) -> tuple[int, int]:
        if self.crop is None:
            raise ValueError("no crop")
        if isinstance(self.crop, tuple):
            return self.crop
        return int(self.crop), int(self.crop)


def load_image(
    path: str | Path,
    size: int | None | _Unset = UNSET,
    crop: int | tuple[int, int] | None | _Unset = UNSET,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    weights: Any = None,
) -> PreparedImage:
    """Read an image file and prepare it: shorter side to ``size``, optional centre crop.

    A shortcut for ``ImagePreprocessing(resize=size, crop=crop, mean=mean, std=std)(path)``. With
    ``weights`` (a torchvision weights enum member or its name), the resize, crop and normalisation
    come from ``weights.transforms()``; ``size``, ``crop``, ``mean`` and ``std`` given as well
    replace those (``crop=None``: no crop; see
    [`ImagePreprocessing.replace`][ctc_plugin.images.ImagePreprocessing.replace] for a ``size``
    alone).

    Args:
        path: The image file (PNG, JPEG, WebP, TIFF, BMP, GIF, ...; any mode, see
            [`to_rgb`][ctc_plugin.images.to_rgb]).
        size: Length of the shorter side after resizing (the aspect ratio is kept); ``None``
            keeps the size. Default: ``None``, or the weights' own.
        crop: Side (or ``(height, width)``) of the centre crop; ``None``: no crop. Default:
            ``None``, or the weights' own.
        mean: The model's normalisation mean (3 values); with ``std``.
        std: The model's normalisation standard deviation (3 values); with ``mean``.
        weights: A torchvision weights enum whose ``transforms()`` describe the preprocessing.

    Returns:
        A [`PreparedImage`][ctc_plugin.images.PreparedImage] with ``.pixels`` in [0, 1] and
        ``.normalized``.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is no readable image, or the sizes do not fit (see
            [`ImagePreprocessing`][ctc_plugin.images.ImagePreprocessing]).
    """
    given: dict[str, Any] = {
        name: value for name, value in (("resize", size), ("crop", crop)) if value is not UNSET
    }
    if mean is not None or std is not None:
        given.update(
            mean=None if mean is None else tuple(mean), std=None if std is None else tuple(std)
        )
    if weights is not None:
        preprocessing = ImagePreprocessing.from_weights(weights, **given)
    else:
        preprocessing = ImagePreprocessing(**given)
    return preprocessing(path)


def read_image(path: str | Path) -> Tensor:
    """Read an image file as the ``(3, H, W)`` ``uint8`` RGB image it shows, upright.

    The EXIF orientation is applied (a phone photo taken upright comes out upright) and the
    image is converted to RGB by [`to_rgb`][ctc_plugin.images.to_rgb]. An animated image (GIF,
    WebP, PNG) or a multi-page TIFF gives its first frame.

    Pillow's guard against decompression bombs holds: an image of more than twice
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (about 179 million by default) is refused, and the
    message says how to raise the limit for a file you trust.

    Raises:
        FileNotFoundError: If ``path`` does not exist (or is a folder, or lies under a file:
            the message says so).
        PermissionError: If the file may not be read.
        ValueError: If the file is not an image Pillow can read, not a regular file (a
            device), has no RGB reading, or has more pixels than Pillow's limit.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path).expanduser()
    if path.is_dir():
        raise FileNotFoundError(
            f"{path} is a folder, not an image file (give the path of an image inside it)"
        )
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a regular file (a device, a pipe): give an image file")
    if not path.is_file():
        under_file = next((p for p in path.parents if p.is_file()), None)
        where = f" ({under_file} is a file, not a folder)" if under_file else ""
        raise FileNotFoundError(f"image file not found: {path}{where} (give the path of an image)")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            if image is None or image is opened:  # Pillow versions differ on what they return
                image = opened.copy()
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"{path} is too large to read safely ({error}); downscale it first (on the command "
            "line: with an image tool), or, in Python and if you trust the file, raise the limit: "
            "PIL.Image.MAX_IMAGE_PIXELS = None"
        ) from error
    except PermissionError as error:
        raise PermissionError(
            error.errno, f"no permission to read the image file {path}", str(path)
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(
            f"cannot read {path} as an image ({error}); is the file complete and a PNG/JPEG?"
        ) from error
    return _pil_to_tensor(to_rgb(image, name=str(path)))


def to_rgb(image: PILImage.Image, name: str | None = None) -> PILImage.Image:
    """Return the PIL image ``image`` as the 8-bit RGB image it shows.

    - palette (``P``, ``PA``), CMYK, YCbCr and other colour modes: Pillow's conversion;
    - grayscale (``1``, ``L``): the gray value in all three channels;
    - 16-bit grayscale (``I;16`` and ``I``): scaled from 0..65535 to 0..255, then as ``L``;
    - with transparency (``RGBA``, ``LA``, ``PA``, the transparent colour of a ``P``, ``L``,
      ``RGB`` or 16-bit grayscale image): composited on a white background, so transparent
      pixels are white (the colour they are usually shown on) rather than whatever colour the
      file stores under them.

    Args:
        image: A PIL image of any mode.
        name: What to call the image in error messages (e.g. its path).

    Raises:
        ValueError: For floating-point images (mode ``F``: no fixed range), 32-bit integer
            images (mode ``I``) with values outside 0..65535, and modes Pillow cannot convert.
    """
    from PIL import Image

    label = name or "the image"
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode == "F":
        raise ValueError(
            f"{label} is a floating-point image (mode F), which has no fixed range: save it "
            "as an 8- or 16-bit image first"
        )
    if image.mode in WIDE_MODES:
        wide = np.asarray(image, dtype=np.float64)
        if wide.size and (wide.min() < 0 or wide.max() > 65535):
            raise ValueError(
                f"{label} is a 32-bit integer image (mode {image.mode}) with values in "
                f"[{wide.min():.0f}, {wide.max():.0f}], outside the 16-bit range 0..65535 it "
                "is read in: scale it to an 8- or 16-bit image first"
            )
        transparent = image.info.get("transparency")
        image = Image.fromarray(np.round(wide / 257.0).astype(np.uint8))
        if isinstance(transparent, int):  # the gray value that stands for "see-through"
            alpha = np.where(wide == transparent, 0, 255).astype(np.uint8)
            image = Image.merge("LA", (image, Image.fromarray(alpha)))
    try:
        if image.mode in ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(
            f"{label}: cannot read mode {image.mode} as RGB ({error}); convert it to RGB first"
        ) from error


# ---------------------------------------------------------------------- helpers
def _positive_int(value: object) -> bool:
    return is_integer(value) and value > 0


def _single(size: Sequence[int] | int | None) -> int | tuple[int, int] | None:
    """A size as torchvision stores it (a one-element list) as an int; two elements: (h, w)."""
    if size is None or isinstance(size, int):
        return size
    values = [int(v) for v in size]
    return values[0] if len(values) == 1 else (values[0], values[1])


def _rounded(values: Sequence[float] | None) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in values or ())


def _classification_transform(weights: Any) -> Any:
    """The ``ImageClassification`` transform that ``weights`` describes."""
    from torchvision.models import WeightsEnum, get_weight

    if isinstance(weights, str):
        try:
            weights = get_weight(weights)
        except (ValueError, KeyError, AttributeError) as error:
            raise ValueError(
                f"unknown torchvision weights {weights!r}; give e.g. "
                "'ResNet50_Weights.IMAGENET1K_V2' or the enum member itself"
            ) from error
    if isinstance(weights, type) and issubclass(weights, WeightsEnum):
        weights = weights.DEFAULT
    transform = weights.transforms() if hasattr(weights, "transforms") else weights
    needed = ("resize_size", "crop_size", "mean", "std", "interpolation")
    if not all(hasattr(transform, name) for name in needed):
        raise ValueError(
            f"{weights!r} describes no image-classification preprocessing (expected a "
            "torchvision weights enum such as ResNet50_Weights.IMAGENET1K_V2)"
        )
    return transform


def _is_pil_image(image: object) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(image, Image.Image)


def _pil_to_tensor(image: PILImage.Image) -> Tensor:
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def _image_tensor(image: Tensor) -> Tensor:
    """Check a tensor image and drop a leading batch dimension of 1."""
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"expected an RGB image shaped (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}"
        )
    if image.dtype == torch.uint8:
        return image
    if not image.is_floating_point():
        raise ValueError(f"expected a uint8 or floating-point image, got {image.dtype}")
    if not bool(torch.isfinite(image).all()):
        raise ValueError("the image holds NaN or infinite values")
    low, high = float(image.min()), float(image.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"float images must hold pixels in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
            "pass uint8 images as they are, or divide by 255"
        )
    return image
