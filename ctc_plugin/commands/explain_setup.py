"""What ``explain``, ``demo`` and ``explain-dataset`` share: option groups and what they build.

The option groups (``--model``/``--weights``, the segmenter's, the methods' settings and
``--device``), the option types of the method and device names, and the objects built from the
options: the device, the model's preprocessing with ``--resize``/``--crop``/``--mean``/``--std``,
the segmenter and a zoo model's shipped Explainer. The runs of ``explain-dataset``
([`ctc_plugin.runs`][ctc_plugin.runs]) build theirs with the same functions.

Only the standard library is imported at the top: ``ctc-plugin --help`` must not wait for
torch.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctc_plugin.commands import CLIError
from ctc_plugin.commands.arguments import input_file, positive_int, weights_file
from ctc_plugin.commands.methods import METHODS
from ctc_plugin.commands.models import LoadedModel
from ctc_plugin.ctc.modes import BIAS_SHARING_MODES, DEFAULT_BIAS_SHARING
from ctc_plugin.method_calls import PERTURBATIONS_PER_EVAL, SAMPLES
from ctc_plugin.wording import caller_stacklevel, known_name

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from ctc_plugin.images import ImagePreprocessing


#: ``--segmenter``: the segmenters the commands build (`make_segmenter`).
SEGMENTERS = ("superpixel", "grid", "sam")
#: ``--sam-model-type``: the architectures the SAM adapter builds
#: ([`SAM_MODEL_TYPES`][ctc_plugin.adapters.sam.SAM_MODEL_TYPES], not imported here: it imports
#: torch and segment-anything).
SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "default", "tiny")
#: Device types ``--device`` takes: the ones the methods are written and tested for.
DEVICE_TYPES = ("cpu", "cuda", "mps")
#: The ``--model`` of a command that is given none: the zoo's ResNet (bundled images).
DEFAULT_MODEL = "resnet"


def add_model_options(parser: argparse.ArgumentParser, default: str | None = DEFAULT_MODEL) -> None:
    """``--model`` and ``--weights``, as ``explain`` and ``explain-dataset`` take them.

    ``default=None`` lets the command tell a ``--model`` left out (it then uses
    `DEFAULT_MODEL`) from one given.
    """
    from ctc_plugin.zoo.settings import FAMILIES

    parser.add_argument(
        "--model",
        default=default,
        help=f"a zoo family ({', '.join(FAMILIES)}; add -composite for the composite "
        "weights, e.g. resnet-composite), a torchvision architecture (e.g. resnet50, needs "
        "--weights; its ImageNet preprocessing and class names come from torchvision's "
        "weight metadata, nothing is downloaded), timm:NAME (a timm architecture, e.g. "
        "timm:convnext_tiny, needs --weights; preprocessing from timm's data config), "
        "hf:FOLDER (a Hugging Face image classifier saved with save_pretrained; class names "
        "from its config, preprocessing from its image processor) or module:callable "
        "returning an nn.Module taking pixels in [0, 1], the module imported as python -m "
        "would: from the current folder first, then the installed packages; a module named "
        "timm or hf cannot be given this way (default: resnet)",
    )
    parser.add_argument(
        "--weights",
        type=weights_file,
        default=None,
        help="state-dict file (torch.save) to load into the model",
    )


def add_segmenter_options(parser: argparse.ArgumentParser) -> None:
    """``--segmenter``, ``--segments`` and the SAM checkpoint options."""
    parser.add_argument(
        "--segmenter",
        choices=SEGMENTERS,
        default="superpixel",
        help="superpixel (scikit-image SLIC; the default), grid, or sam (needs --sam-checkpoint)",
    )
    parser.add_argument(
        "--segments",
        type=positive_int,
        default=25,
        help="about how many segments: superpixels, or grid cells (rounded to a square grid); "
        "default: 25",
    )
    parser.add_argument(
        "--sam-checkpoint",
        type=input_file,
        default=None,
        help="segment-anything checkpoint (.pth), needed by --segmenter sam",
    )
    parser.add_argument(
        "--sam-model-type",
        choices=SAM_MODEL_TYPES,
        default="vit_b",
        help=f"architecture of the --sam-checkpoint, one of {', '.join(SAM_MODEL_TYPES)} "
        "(default: vit_b; 'default' is segment-anything's name for vit_h, 'tiny' a small "
        "test architecture)",
    )


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """The methods' settings (bias sharing, Lime samples, copies per pass) and ``--device``."""
    parser.add_argument(
        "--bias-sharing",
        choices=BIAS_SHARING_MODES,
        default=DEFAULT_BIAS_SHARING,
        help=f"how CTC shares biases among the segments (default: {DEFAULT_BIAS_SHARING})",
    )
    parser.add_argument(
        "--lime-samples",
        type=positive_int,
        default=SAMPLES,
        help=f"samples of the lime method ({SAMPLES})",
    )
    parser.add_argument(
        "--explainer",
        type=input_file,
        default=None,
        metavar="FILE",
        help="the Explainer of the explainer method: a file written by ctc-plugin explainer "
        "train or Explainer.save, trained for this model (default: the one shipped with a "
        "zoo model)",
    )
    parser.add_argument(
        "--perturbations-per-eval",
        type=positive_int,
        default=PERTURBATIONS_PER_EVAL,
        help="segment copies per forward pass of ctc, feature-ablation and lime: bounds memory "
        f"and sets the progress bar's steps ({PERTURBATIONS_PER_EVAL}; CTC's proportional "
        "sharing takes all at once)",
    )
    parser.add_argument(
        "--device",
        type=device_name,
        default="cpu",
        help="where the model runs: cpu, cuda, cuda:N or mps (default: cpu); segmentation "
        "runs on the CPU",
    )


def method_name(text: str) -> str:
    """``--method``: a name of `METHODS` (an image path there gets a hint).

    The benchmark's spelling of a method is taken too (``FeatureAblation``, ``GradCAM``).
    """
    try:
        return known_name(text, list(METHODS), "method")
    except ValueError:
        pass
    hint = ""
    mode = text.lower().removeprefix("ctc").lstrip("-_ ")
    if text.lower().startswith("ctc") and mode in BIAS_SHARING_MODES:  # the benchmark's CTC-none
        hint = f"; for CTC with {mode} sharing give --method ctc --bias-sharing {mode}"
    elif Path(text).suffix or Path(text).exists():
        hint = (
            f"; {text!r} looks like images: give them before the methods (the option takes "
            "every word after it)"
        )
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose from {', '.join(METHODS)}){hint}"
    )


method_name.__name__ = "method"


def device_name(text: str) -> str:
    """``--device``: ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (the hardware is checked later).

    Other torch device types (``meta``, ``xla``, ``xpu``, ...) are refused: the methods are
    not written for them.
    """
    kind, _, index = text.partition(":")
    if kind not in DEVICE_TYPES or (index and not index.isdigit()):
        raise argparse.ArgumentTypeError(
            f"expected {', '.join(DEVICE_TYPES[:-1])} or {DEVICE_TYPES[-1]} (cuda:N for the "
            f"N-th GPU), got {text!r}"
        )
    return text


device_name.__name__ = "device"


def preprocessing_for(
    args: argparse.Namespace, loaded: LoadedModel | ImagePreprocessing
) -> ImagePreprocessing:
    """The model's own preprocessing with ``--resize``, ``--crop``, ``--mean``, ``--std``.

    ``loaded`` is the model, or its own preprocessing (``loaded.preprocessing``).

    The one builder of ``explain``, ``demo`` and ``explain-dataset`` (whose runs pass their
    [`RunConfig`][ctc_plugin.runs.plan.RunConfig]'s values as ``args``). Given ``--resize``
    without ``--crop``, the model's crop is kept where it fits and shrinks to ``--resize`` where
    it does not ([`ImagePreprocessing.replace`][ctc_plugin.images.ImagePreprocessing.replace]).

    Raises:
        CLIError: For ``--mean`` without ``--std`` (or the reverse) and a crop that does not
            fit.
    """
    from ctc_plugin.images import ImagePreprocessing

    own = loaded if isinstance(loaded, ImagePreprocessing) else loaded.preprocessing
    changes: dict[str, Any] = {}
    if args.resize is not None:
        changes["resize"] = args.resize
    if args.crop is not None:
        changes["crop"] = None if args.crop == "none" else args.crop
    if (args.mean is None) != (args.std is None):
        raise CLIError("give both --mean and --std (the model's input normalisation), or neither")
    if args.mean is not None:
        changes.update(mean=tuple(args.mean), std=tuple(args.std))
    try:
        return own.replace(**changes)
    except ValueError as error:
        option = "--mean" if str(error).startswith("mean") else "--crop"
        raise CLIError(f"argument {option}: {error}") from error


def resolve_device(text: str) -> torch.device:
    """The ``--device``, checked against this machine.

    Raises:
        CLIError: For a device name torch does not know or hardware that is not there.
    """
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as error:
        raise CLIError(f"argument --device: {error}") from error
    if device.type not in DEVICE_TYPES:
        raise CLIError(
            f"argument --device: {text}: use {', '.join(DEVICE_TYPES)} (the device types the "
            "methods run on)"
        )
    available = {
        "cuda": torch.cuda.is_available,
        "mps": lambda: hasattr(torch.backends, "mps") and torch.backends.mps.is_available(),
    }
    if device.type in available and not available[device.type]():
        raise CLIError(f"argument --device: {text} is not available on this machine; use cpu")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise CLIError(f"argument --device: {text}: this machine has {count} CUDA devices")
    return device


def check_sam_checkpoint(segmenter: str, sam_checkpoint: Any) -> None:
    """Refuse a SAM checkpoint given with another segmenter than SAM (it would be ignored).

    The one check of ``explain``, ``explain-dataset`` and
    [`explain_dataset`][ctc_plugin.runs.explain_dataset]; its message names both the option and
    the keyword.

    Raises:
        ValueError: If ``sam_checkpoint`` is not ``None`` and ``segmenter`` is not ``"sam"``.
    """
    if sam_checkpoint is not None and segmenter != "sam":
        raise ValueError(
            f"--sam-checkpoint / sam_checkpoint is for segmenter='sam' (--segmenter sam), and "
            f"the segmenter is {segmenter!r}: choose the sam segmenter, or drop the checkpoint"
        )


def sam_checkpoint_option(args: argparse.Namespace) -> None:
    """`check_sam_checkpoint` on ``args``.

    Raises:
        CLIError: Its message, for a command's one-line error.
    """
    try:
        check_sam_checkpoint(args.segmenter, args.sam_checkpoint)
    except ValueError as error:
        raise CLIError(str(error)) from error


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


def segment_pixels(segmenter, pixels: torch.Tensor) -> torch.Tensor:
    """The ``(1, 1, H, W)`` segment ids of ``pixels``, relabelled ``0..K-1``."""
    import torch

    mask = segmenter(pixels.cpu())
    _, contiguous = torch.unique(mask, return_inverse=True)
    return contiguous.reshape(mask.shape).to(torch.int64)


def segment_image(segmenter, pixels: torch.Tensor, options: Any, name: str) -> torch.Tensor:
    """`segment_pixels` for a command: a segmenter's refusal names the image ``name``.

    The one segmentation of ``explain`` and ``explain-dataset``; ``options`` has their
    ``segmenter`` and ``segments``. A grid with more cells than the image has pixels is told
    the most ``--segments`` the image takes.

    Raises:
        CLIError: For a ``ValueError`` of the segmenter, naming the option and the image.
    """
    try:
        return segment_pixels(segmenter, pixels)
    except ValueError as error:
        if options.segmenter != "grid":
            raise CLIError(f"--segmenter {options.segmenter}: {name}: {error}") from error
        side = min(pixels.shape[-2:])
        raise CLIError(
            f"--segments {options.segments}: {name}: {error}; give at most --segments "
            f"{side * side} (a {side}x{side} grid) for this image, or a larger --resize"
        ) from error


def explainer_for(
    loaded: LoadedModel,
    args: argparse.Namespace,
    option: str = "--method",
    preprocessing: ImagePreprocessing | None = None,
) -> nn.Module | None:
    """The Explainer that ``option`` (``--method``) asks for, or ``None`` where it asks for none.

    The file of ``--explainer``, loaded for this model (a class-specific explainer takes its
    architecture), or else the one shipped with a zoo model. A file trained for other weights
    than the model's (the network, or the network behind ``preprocessing``'s normalisation, as
    the command runs it) is warned about here, once for the command.

    Raises:
        CLIError: ``--explainer`` without the explainer method, a file that is no explainer
            (or one for another architecture), or a model that is no zoo model without it.
    """
    path = getattr(args, "explainer", None)
    if "explainer" not in args.methods:
        if path is not None:
            raise CLIError(
                f"--explainer {path} is the Explainer of {option} explainer, which is not "
                f"among the methods: add explainer to {option}, or leave --explainer out"
            )
        return None
    if path is not None:
        from ctc_plugin.explainer.network import Explainer

        try:
            explainer = Explainer.load(path, classifier=loaded.network).eval()
        except (OSError, ValueError) as error:
            raise CLIError(f"argument --explainer: {error}") from error
        _warn_if_trained_for_other_weights(explainer, loaded.network, preprocessing)
        return explainer
    if loaded.family is None:
        raise CLIError(
            f"{option} explainer: {loaded.name} has no shipped Explainer (they belong to the "
            "zoo models: --model resnet, vgg-composite, ...); train one for it in Python "
            "(ctc_plugin.Explainer(backbone, classes).fit(model, ...), then .save(FILE); "
            "`ctc-plugin explainer train` trains for the zoo's models only) and give its file with "
            "--explainer FILE, or choose other methods"
        )
    from ctc_plugin import zoo

    if args.weights is not None:
        print(
            f"note: {option} explainer uses the Explainer shipped for {loaded.family} "
            f"({loaded.split}), trained against the shipped weights, not {args.weights}; give "
            "one trained against them with --explainer FILE (ctc-plugin explainer train "
            f"--model {loaded.family} --weights {args.weights})"
        )
    return zoo.load_explainer(loaded.family, loaded.split or "shapes")


def _warn_if_trained_for_other_weights(
    explainer: nn.Module, network: nn.Module, preprocessing: ImagePreprocessing | None
) -> None:
    """Warn when ``--explainer``'s file was trained for other weights than ``network``'s.

    ``Explainer.fit`` records the classifier it was given: the network itself, or the network
    behind the normalisation (``preprocessing.wrap``), which takes images as the command gives
    them; either is this model.
    """
    import warnings

    from ctc_plugin.explainer.attribution import ClassifierMismatchWarning
    from ctc_plugin.module_state import state_digest

    trained_for = explainer.trained_for_digests()
    if not trained_for:
        return
    models = [network] + ([preprocessing.wrap(network)] if preprocessing is not None else [])
    if not any(state_digest(model) in trained_for for model in models):
        warnings.warn(
            "the --explainer file was trained for a classifier with other weights: its masks "
            "show what that classifier uses, not this model; give the file trained for these "
            "weights (ctc-plugin explainer train makes one for a zoo model, "
            "ctc_plugin.Explainer.fit in Python for your own)",
            ClassifierMismatchWarning,
            stacklevel=caller_stacklevel(),
        )


def explainer_size_refusal(
    explainer: nn.Module | None, name: str, size: tuple[int, int]
) -> str | None:
    """Why ``explainer`` cannot take the image ``name`` at ``size`` (height, width), or ``None``.

    The message names both sizes and the ``--resize`` / ``--crop`` that give the Explainer's
    size (``explain`` and ``explain-dataset`` both take them).
    """
    trained = getattr(explainer, "trained_image_size", None)
    if trained is None or tuple(size) == tuple(trained):
        return None
    height, width = size
    fix = (
        f"give --resize {trained[0]} --crop {trained[0]} (the size it was trained on)"
        if trained[0] == trained[1]
        else f"resize and crop the images to {trained[1]}x{trained[0]}"
    )
    return (
        f"{name} becomes a {width}x{height} image but the Explainer was trained on "
        f"{trained[1]}x{trained[0]} images and takes no other size; {fix}, give an explainer "
        "trained on images of several sizes (--explainer FILE), or choose other methods"
    )


def model_for_split(
    model: str, split: str | None, chooses: Callable[[str], str]
) -> tuple[str, str]:
    """The ``--model`` and the bundled split it explains, each following the other.

    A zoo model named with its split (``resnet-composite``) gives the split where none is
    chosen; a zoo family (``resnet``) takes the chosen split's weights (``resnet-composite`` on
    ``composite``); any other model is kept as given. The one rule of ``demo`` and of
    ``explain-dataset`` on the bundled images.

    Args:
        model: ``--model`` as given.
        split: The split chosen, or ``None`` (then the model's, else ``shapes``).
        chooses: The words that choose a split on this command (``--split composite``,
            ``SOURCE shapes:composite``), for the message.

    Raises:
        CLIError: For a zoo model trained on another split than the one chosen.
    """
    from ctc_plugin.datasets.splits import SPLITS
    from ctc_plugin.zoo.settings import FAMILIES

    family, _, named = model.partition("-")
    if ":" in model or family not in FAMILIES or named not in SPLITS:
        split = split or "shapes"
    elif split is None:
        split = named
    elif split != named:
        raise CLIError(
            f"--model {model} is trained on the {named} split, but {chooses(split)} explains "
            f"{split} images: give --model {family} (with {chooses(split)}) or {chooses(named)}"
        )
    if split == "composite" and model in FAMILIES:  # a zoo family: its composite weights
        model = f"{model}-composite"
    return model, split
