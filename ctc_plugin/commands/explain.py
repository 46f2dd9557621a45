"""``ctc-plugin explain`` and ``ctc-plugin demo``: segment an image, score the segments with CTC.

``explain IMAGE`` loads an image, resizes it to the model's input size, segments it, runs
``CTC(model).attribute(...)``, prints the segments ranked by contribution and writes a figure.
With no IMAGE it explains a bundled synthetic sample with the shipped ResNet-style model;
``demo`` does the same and also draws the sample's ground-truth evidence.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin.cli import CLIError
from ctc_plugin.commands.arguments import input_file, output_file, positive_int

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SEGMENTERS = ("superpixel", "grid", "sam")


@dataclass
class LoadedModel:
    """A classifier taking ``(N, 3, size, size)`` images in [0, 1], with its class names."""

    model: nn.Module
    name: str
    input_size: int
    classes: list[str] | None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``explain`` and ``demo`` subcommands."""
    explain = subparsers.add_parser(
        "explain",
        help="explain one image: segments ranked by their contribution to the class (CTC)",
        description="Load an image, resize it to the model's input size, segment it, score every "
        "segment with CTC, print the ranking and write a figure (image, segments, ranked "
        "contributions, heatmap). With no IMAGE: a bundled synthetic sample and the shipped "
        "ResNet-style model.",
    )
    explain.add_argument(
        "image",
        nargs="?",
        type=input_file,
        default=None,
        metavar="IMAGE",
        help="image file (PNG, JPEG, ...; palette, grayscale, 16-bit and CMYK images are read "
        "as RGB, transparent pixels composited on white); default: a bundled synthetic sample",
    )
    _add_options(explain, default_out="explanation.png")
    explain.set_defaults(func=run_explain)

    demo = subparsers.add_parser(
        "demo",
        help="explain a bundled synthetic sample and draw its ground-truth evidence",
    )
    demo.add_argument(
        "--split",
        choices=("shapes", "composite"),
        default="shapes",
        help="which bundled sample (and which zoo weights) to use",
    )
    _add_options(demo, default_out="out/demo.png")
    demo.set_defaults(func=run_demo, image=None)


def _add_options(parser: argparse.ArgumentParser, default_out: str) -> None:
    from ctc_plugin.zoo.loading import FAMILIES

    parser.add_argument(
        "--model",
        default="resnet",
        help=f"a zoo family ({', '.join(FAMILIES)}; add -composite for the composite "
        "weights, e.g. resnet-composite), a torchvision architecture (e.g. resnet18, needs "
        "--weights) or module:callable returning an nn.Module (default: resnet)",
    )
    parser.add_argument(
        "--weights",
        type=input_file,
        default=None,
        help="state-dict file (torch.save) to load into the model",
    )
    parser.add_argument(
        "--input-size",
        type=positive_int,
        default=None,
        help="side the image is resized to (default: the model's own)",
    )
    parser.add_argument(
        "--target",
        default=None,
        help="class index or name to explain (default: the predicted class)",
    )
    parser.add_argument(
        "--segmenter",
        choices=SEGMENTERS,
        default="superpixel",
        help="superpixel (scikit-image SLIC), grid, or sam (needs --sam-checkpoint)",
    )
    parser.add_argument(
        "--segments",
        type=positive_int,
        default=25,
        help="about how many segments: superpixels, or grid cells (rounded to a square grid)",
    )
    parser.add_argument(
        "--sam-checkpoint",
        type=input_file,
        default=None,
        help="segment-anything checkpoint (.pth), needed by --segmenter sam",
    )
    parser.add_argument(
        "--sam-model-type",
        default="vit_b",
        help="architecture of the SAM checkpoint: vit_b, vit_l, vit_h",
    )
    parser.add_argument(
        "--bias-sharing",
        choices=("reference", "proportional", "none"),
        default="reference",
        help="how CTC shares biases among the features",
    )
    parser.add_argument("--top", type=positive_int, default=10, help="features to list and plot")
    parser.add_argument(
        "--out", type=output_file, default=default_out, help=f"figure (PNG; {default_out})"
    )


# ---------------------------------------------------------------------- models
def _zoo_model(name: str, weights: Path | None) -> LoadedModel:
    from ctc_plugin import zoo
    from ctc_plugin.datasets.scene import SPLITS

    family, _, split = name.partition("-")
    split = split or "shapes"
    if split not in SPLITS:
        raise CLIError(
            f"--model {name!r}: unknown split {split!r}; use {family} or {family}-composite"
        )
    try:
        model = zoo.load(family, split, weights=weights)
    except FileNotFoundError as error:
        raise CLIError(f"--model {name}: {error}") from error
    return LoadedModel(model, name, 96, list(SPLITS[split]))


def _torchvision_model(name: str, weights: Path | None) -> LoadedModel:
    from ctc_plugin import zoo
    from ctc_plugin.zoo.models import Normalize

    if weights is None:
        raise CLIError(
            f"--model {name} is a torchvision architecture: give its weights with "
            "--weights PATH (a state-dict .pth file; nothing is downloaded)"
        )
    extra = {"aux_logits": True, "init_weights": False} if name == "inception_v3" else {}
    network = zoo.load_torchvision(name, weights, **extra)
    model = nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), network).eval()
    return LoadedModel(model, name, 299 if name == "inception_v3" else 224, None)


def _callable_model(spec: str, weights: Path | None) -> LoadedModel:
    from ctc_plugin.zoo.loading import read_state_dict

    module_name, _, attribute = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise CLIError(
            f"--model {spec!r}: cannot import {attribute!r} from {module_name!r} ({error})"
        ) from error
    model = factory() if not isinstance(factory, nn.Module) else factory
    if not isinstance(model, nn.Module):
        raise CLIError(
            f"--model {spec!r} must name an nn.Module or a callable returning one, "
            f"got {type(model).__name__}"
        )
    if weights is not None:
        model.load_state_dict(read_state_dict(weights))
    return LoadedModel(model.eval(), spec, 224, None)


def load_model(name: str, weights: Path | None) -> LoadedModel:
    """Resolve ``--model`` / ``--weights`` into a model taking images in [0, 1].

    ``weights`` is a readable file (``--weights`` checks it while parsing).

    Raises:
        CLIError: Unknown model names and missing zoo weights, naming the flag to fix.
    """
    import torchvision.models

    from ctc_plugin.zoo import FAMILIES

    if ":" in name:
        return _callable_model(name, weights)
    if name.partition("-")[0] in FAMILIES:
        return _zoo_model(name, weights)
    if name in torchvision.models.list_models(module=torchvision.models):
        return _torchvision_model(name, weights)
    raise CLIError(
        f"--model: unknown model {name!r}; use a zoo family ({', '.join(FAMILIES)}), "
        "a torchvision architecture with --weights PATH, or module:callable"
    )


# ---------------------------------------------------------------------- images
#: Modes holding an alpha channel (``P`` images may too: a ``transparency`` entry).
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")

#: Integer grayscale modes read as 16-bit values (16-bit PNGs open as ``I;16``, or ``I`` in
#: older Pillow versions).
WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def load_image(path: Path, size: int) -> torch.Tensor:
    """Read an image file as a ``(1, 3, size, size)`` float tensor in [0, 1].

    Every colour or gray image is read as the RGB image it shows (`to_rgb`): palette
    and CMYK images are converted, grayscale ones (8- and 16-bit) repeat their one channel
    three times, and transparent pixels are composited on white. The image is then resized
    to ``size x size``.

    Raises:
        FileNotFoundError: If the file does not exist.
        CLIError: If it is not a readable image, or an image with no RGB reading.
    """
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path} (give the path of an image)")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise CLIError(
            f"cannot read {path} as an image ({error}); is the file complete and a PNG/JPEG?"
        ) from error
    if image.mode != "RGB":
        print(f"reading {path.name} (mode {image.mode}) as RGB")
    image = to_rgb(image, path)
    if image.size != (size, size):
        print(f"resizing {image.size[0]}x{image.size[1]} -> {size}x{size} (the model's input)")
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy()).unsqueeze(0)


def to_rgb(image, path: Path):
    """Return the PIL image ``image`` as the 8-bit RGB image it shows.

    - palette (``P``, ``PA``), CMYK, YCbCr and other colour modes: Pillow's conversion;
    - grayscale (``1``, ``L``): the gray value in all three channels;
    - 16-bit grayscale (``I;16`` and ``I``): scaled from 0..65535 to 0..255, then as ``L``;
    - with transparency (``RGBA``, ``LA``, ``PA``, a ``P`` image's transparent colour):
      composited on a white background, so transparent pixels are white (the colour they are
      usually shown on) rather than whatever colour the file stores under them.

    Raises:
        CLIError: For floating-point images (mode ``F``: no fixed range) and modes Pillow
            cannot convert.
    """
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode == "F":
        raise CLIError(
            f"{path} is a floating-point image (mode F), which has no fixed range: save it "
            "as an 8- or 16-bit image first"
        )
    if image.mode in WIDE_MODES:
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8))
    try:
        if image.mode in ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as error:
        raise CLIError(
            f"{path}: cannot read mode {image.mode} as RGB ({error}); convert it to RGB first"
        ) from error


def make_segmenter(args: argparse.Namespace):
    """Return the segmenter chosen by ``--segmenter`` (and ``--sam-checkpoint``)."""
    from ctc_plugin.features import GridSegmenter, SuperpixelSegmenter

    if args.segmenter == "superpixel":
        return SuperpixelSegmenter(n_segments=args.segments)
    if args.segmenter == "grid":
        return GridSegmenter(cells=max(1, round(args.segments**0.5)))
    if args.sam_checkpoint is None:
        raise CLIError(
            "--segmenter sam needs a segment-anything checkpoint: pass "
            "--sam-checkpoint PATH (e.g. sam_vit_b_01ec64.pth, with --sam-model-type)"
        )
    from ctc_plugin.adapters.sam import SAMSegmenter

    return SAMSegmenter(checkpoint=args.sam_checkpoint, model_type=args.sam_model_type)


def _check_input_channels(loaded: LoadedModel) -> None:
    """Refuse a model whose first convolution does not take the 3 channels of an RGB image."""
    first = next((m for m in loaded.model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != 3:
        raise CLIError(
            f"--model {loaded.name} takes {first.in_channels}-channel images; explain reads "
            "every image as 3-channel RGB"
        )


def _logits(loaded: LoadedModel, image: torch.Tensor, resized: bool) -> torch.Tensor:
    """The model's logits for ``image``; a size the model cannot take is a user error.

    Raises:
        CLIError: If ``--input-size`` changed the model's input size and the model fails on
            it (a RuntimeError from its layers); at its own size a failure stays a traceback.
    """
    try:
        with torch.no_grad():
            return loaded.model(image)[0]
    except RuntimeError as error:
        if not resized:
            raise
        size = image.shape[-1]
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CLIError(
            f"--input-size {size}: {loaded.name} cannot take {size}x{size} images ({first}); "
            f"its own size is {loaded.input_size}"
        ) from error


def _target(spec: str | None, loaded: LoadedModel, logits: torch.Tensor) -> int:
    if spec is None:
        return int(logits.argmax())
    if spec.lstrip("-").isdigit():
        target = int(spec)
    elif loaded.classes is not None and spec in loaded.classes:
        target = loaded.classes.index(spec)
    else:
        names = f" or a name in {loaded.classes}" if loaded.classes else ""
        raise CLIError(f"--target {spec!r}: give a class index{names}")
    if not 0 <= target < logits.numel():
        raise CLIError(f"--target {target} out of range: the model has {logits.numel()} classes")
    return target


# ---------------------------------------------------------------------- the job
def explain(args: argparse.Namespace, evidence: torch.Tensor | None = None) -> int:
    """Run the explanation described by ``args``; print the ranking and write the figure."""
    from tqdm.auto import tqdm

    from ctc_plugin import CTC, UnsupportedOperationError
    from ctc_plugin.viz import plot_explanation, save_figure

    split = getattr(args, "split", "shapes")
    loaded = load_model(args.model, args.weights)
    _check_input_channels(loaded)
    size = args.input_size or loaded.input_size
    image_path = args.image or _sample_path(split, "image")
    image = load_image(image_path, size)
    if evidence is not None and evidence.shape != (size, size):
        resized = F.interpolate(evidence[None, None].float(), size=(size, size), mode="nearest")
        evidence = resized[0, 0] > 0.5
    logits = _logits(loaded, image, resized=size != loaded.input_size)
    target = _target(args.target, loaded, logits)
    segmenter = make_segmenter(args)
    with tqdm(total=3, desc="explaining", unit="step") as steps:
        steps.set_postfix_str("segmenting")
        mask = segmenter(image)
        steps.update()
        steps.set_postfix_str("CTC")
        ctc = CTC(loaded.model, bias_sharing=args.bias_sharing)
        try:
            attributions, scores = ctc.attribute(
                image, target=target, feature_mask=mask, return_feature_scores=True
            )
        except UnsupportedOperationError as error:
            raise CLIError(f"--model {args.model}: {error}") from error
        steps.update()
        steps.set_postfix_str("figure")
        ranked = scores.ranked(0)
        name = loaded.classes[target] if loaded.classes else str(target)
        figure = plot_explanation(
            image[0],
            mask[0, 0],
            ranked,
            attributions[0, 0],
            evidence=evidence,
            title=f"CTC ({args.bias_sharing}) of {loaded.name} for class {name!r} "
            f"on {image_path.name}",
            top_k=args.top,
        )
        save_figure(figure, args.out)
        steps.update()
    _print_report(loaded, image_path, logits, target, ranked, mask[0, 0], evidence)
    print(f"figure written to {args.out}")
    return 0


def _print_report(
    loaded: LoadedModel,
    image_path: Path,
    logits: torch.Tensor,
    target: int,
    ranked: list[tuple[int, float]],
    mask: torch.Tensor,
    evidence: torch.Tensor | None,
) -> None:
    def label(index: int) -> str:
        return f"{index} ({loaded.classes[index]})" if loaded.classes else str(index)

    probability = logits.softmax(0)
    predicted = int(logits.argmax())
    print(
        f"model {loaded.name} on {image_path}: predicted {label(predicted)} "
        f"p={probability[predicted]:.3f}; explaining target {label(target)} "
        f"(logit {logits[target]:.3f})"
    )
    header = f"{'rank':>4}  {'segment':>7}  {'score':>10}  {'area':>6}"
    print(header + ("  in evidence" if evidence is not None else ""))
    for rank, (feature, score) in enumerate(ranked, start=1):
        inside = mask == feature
        line = f"{rank:>4}  {feature:>7}  {score:>10.4f}  {inside.float().mean():>6.1%}"
        if evidence is not None:
            line += f"  {(inside & evidence).sum() / inside.sum().clamp(min=1):>11.0%}"
        print(line)
    print(f"sum of scores {sum(s for _, s in ranked):.4f}")


def _sample_path(split: str, kind: str) -> Path:
    from ctc_plugin.datasets import sample_path

    return sample_path(split, kind)


def run_explain(args: argparse.Namespace) -> int:
    """Entry point of ``ctc-plugin explain``."""
    return explain(args)


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of ``ctc-plugin demo``: the bundled sample with its ground-truth evidence."""
    from PIL import Image

    if args.split == "composite" and "-" not in args.model and ":" not in args.model:
        args.model = f"{args.model}-composite"
    with Image.open(_sample_path(args.split, "evidence")) as opened:
        evidence = torch.from_numpy(np.asarray(opened) > 127)
    return explain(args, evidence=evidence)
