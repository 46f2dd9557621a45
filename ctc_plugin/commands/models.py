"""Resolve ``--model`` / ``--weights`` into a `LoadedModel`.

The sources ``--model`` takes: the zoo's families, torchvision architectures, ``timm:NAME``,
``hf:FOLDER`` (a ``transformers`` classifier saved with ``save_pretrained``) and
``module:callable``; each with its own preprocessing and, where known, its class names.
Nothing is downloaded.

Only the standard library is imported at the top: ``ctc-plugin --help`` must not wait for
torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctc_plugin.commands import CLIError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from ctc_plugin.images import ImagePreprocessing


@dataclass
class LoadedModel:
    """A classifier as ``--model`` names it, with its own preprocessing and class names.

    Attributes:
        network: The classifier as built (taking the input ``preprocessing`` normalises).
        name: The ``--model`` text.
        preprocessing: The model's own image preprocessing (resize, crop, normalisation).
        classes: Class names by index, when known.
        family: The zoo family (zoo models only), for ``--method explainer``.
        split: The zoo split (zoo models only).
        source: Where the preprocessing and class names come from, for the report.
        note: What the user should know about the preprocessing chosen (printed by
            ``explain``), or ``""``.
        cast_from: The floating-point types of the weights as loaded, where the command casts
            them to float32 (`ctc_plugin.commands.model_checks.choose_precision`), else ``()``.
    """

    network: nn.Module
    name: str
    preprocessing: ImagePreprocessing
    classes: list[str] | None
    family: str | None = None
    split: str | None = None
    source: str = ""
    note: str = ""
    cast_from: tuple[str, ...] = ()


def _zoo_model(name: str, weights: Path | None) -> LoadedModel:
    from ctc_plugin import zoo
    from ctc_plugin.datasets.splits import SPLITS
    from ctc_plugin.images import ImagePreprocessing

    family, _, split = name.partition("-")
    split = split or "shapes"
    if split not in SPLITS:
        raise CLIError(
            f"--model {name!r}: unknown split {split!r}; use {family} or {family}-composite"
            + _did_you_mean(name)
        )
    try:
        with _weights_errors(name, weights):
            model = zoo.load(family, split, weights=weights)
    except FileNotFoundError as error:
        raise CLIError(f"--model {name}: {error}") from error
    size = 96  # the zoo's training images (TrainConfig.image_size); the models normalise
    return LoadedModel(
        model,
        name,
        ImagePreprocessing(resize=size, crop=size),
        list(SPLITS[split]),
        family=family,
        split=split,
        source=f"zoo {family} ({split})",
    )


def _torchvision_model(name: str, weights: Path | None) -> LoadedModel:
    from torchvision.models import get_model_weights

    from ctc_plugin import zoo
    from ctc_plugin.images import ImagePreprocessing

    weights = _needed_weights(name, weights, "a torchvision architecture")
    with _weights_errors(name, weights):  # GoogLeNet and Inception built as for weights
        network = zoo.load_torchvision(name, weights)
    size = getattr(network, "image_size", None)  # a ViT's own input size
    described = _weights_of_size(get_model_weights(name), size)
    preprocessing = ImagePreprocessing.from_weights(described)
    note = ""
    if size is not None and preprocessing.crop != size:  # no published weights of that size
        preprocessing = preprocessing.replace(resize=size, crop=size)
        note = (
            f"{name} takes {size}x{size} images (its weights' position embedding): resized and "
            f"cropped to {size} with the normalisation of {type(described).__name__}."
            f"{described.name}; give --resize and --crop to read them otherwise"
        )
    if getattr(network, "transform_input", False):
        note = (
            f"{name} is built with transform_input=True, as torchvision's published weights and "
            "models fine-tuned from them expect; for weights trained from scratch with "
            f"torchvision's default (transform_input=False), give --model module:callable "
            f"returning torchvision.models.{name}(num_classes=..., transform_input=False)"
        )
    return LoadedModel(
        network,
        name,
        preprocessing,
        list(described.meta.get("categories") or []) or None,
        source=f"torchvision {type(described).__name__}.{described.name}",
        note=note,
    )


def _weights_of_size(enum: Any, size: int | None) -> Any:
    """The member of a torchvision weights ``enum`` whose images are ``size`` pixels wide.

    A ViT fine-tuned at 384 pixels (as SWAG's end-to-end weights are) takes their resize, crop
    and normalisation; the default member for any other model (metadata only: no download).
    """
    if size is None:
        return enum.DEFAULT
    for member in enum:
        if member.transforms().crop_size == [size]:
            return member
    return enum.DEFAULT


def _callable_model(spec: str, weights: Path | None) -> LoadedModel:
    """``--model module:callable``: the module imported as ``python -m`` would find it.

    A model returned inside ``nn.DataParallel``, ``DistributedDataParallel`` or
    ``torch.compile`` is explained as the model inside (`ctc_plugin.module_paths.unwrapped`):
    on the command's one device it computes the same (the methods run a compiled model's Python
    code anyway, and DataParallel's threads would run the copies outside the methods' tracing),
    messages name its own module paths (``features.3``, not ``_orig_mod.features.3``), and
    ``--weights`` saved from the bare model or from a wrapped one load into it.
    """
    from torch import nn

    from ctc_plugin.files import read_state_dict
    from ctc_plugin.images import ImagePreprocessing
    from ctc_plugin.module_paths import unwrapping
    from ctc_plugin.zoo.loading import load_state_into

    module_name, _, attribute = spec.partition(":")
    factory = _import_attribute(spec, module_name, attribute)
    model = factory if isinstance(factory, nn.Module) else _call_factory(spec, factory)
    if not isinstance(model, nn.Module):
        raise CLIError(
            f"--model {spec!r} must name an nn.Module or a callable returning one, "
            f"got {type(model).__name__}"
        )
    model, wrappers = unwrapping(model)
    note = _unwrapping_note(spec, wrappers)
    if weights is not None:
        with _weights_errors(spec, weights):  # the zoo's loading and its message
            model = load_state_into(model, read_state_dict(weights), weights)
    return LoadedModel(
        model.eval(), spec, ImagePreprocessing(resize=224), None, source=spec, note=note
    )


def _unwrapping_note(spec: str, wrappers: list[nn.Module]) -> str:
    """The note that ``--model spec`` is explained as the model inside ``wrappers``, or "".

    ``wrappers``: torch's wrappers around it, outermost first
    ([`unwrapping`][ctc_plugin.module_paths.unwrapping]).
    """
    if not wrappers:
        return ""
    names = " inside ".join(map(_wrapper_name, wrappers))
    return (
        f"--model {spec} returns the model inside {names}: it is explained as that model (the "
        "same numbers on one device)"
    )


def _wrapper_name(wrapper: nn.Module) -> str:
    """How the note names one of torch's wrappers."""
    from torch import nn

    from ctc_plugin.module_paths import held_inside

    if isinstance(wrapper, nn.DataParallel):
        return "nn.DataParallel"
    if held_inside(wrapper) == "module":  # DistributedDataParallel
        return type(wrapper).__name__
    return "torch.compile(...)"


def _import_attribute(spec: str, module_name: str, attribute: str) -> Any:
    """Import ``module_name`` with the current folder first on ``sys.path``; get ``attribute``.

    ``python -m`` puts the current folder first on ``sys.path``, the ``ctc-plugin`` console
    script does not: this import does the same as ``python -m`` either way, and restores
    ``sys.path`` after it.
    """
    import importlib
    import os
    import sys

    saved = list(sys.path)
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise CLIError(_import_failure(spec, module_name, error)) from error
    except SyntaxError as error:
        where = f"{error.filename}, line {error.lineno}" if error.filename else module_name
        raise CLIError(
            f"--model {spec!r}: the module {module_name!r} has a syntax error ({where}: "
            f"{error.msg}); fix it, then run the command again"
        ) from error
    except Exception as error:  # raised by the module's own code while it is imported
        raise CLIError(_module_raised(spec, module_name, error)) from error
    finally:
        sys.path[:] = saved
    try:
        return getattr(module, attribute)
    except AttributeError as error:
        raise CLIError(
            f"--model {spec!r}: the module {module_name!r} ({module.__file__}) has no "
            f"{attribute!r}; name a function or class in it that returns the nn.Module"
        ) from error


def _import_failure(spec: str, module_name: str, error: ImportError) -> str:
    """What an ImportError while importing ``--model``'s module means, and what to do.

    The module itself not found: where it is looked for. A package it imports that is not
    installed: install it. Anything else (a name the package does not have, an ImportError
    the module raises itself): the error as it is.
    """
    import os

    missing = error.name if isinstance(error, ModuleNotFoundError) else None
    if missing is not None and (missing == module_name or module_name.startswith(missing + ".")):
        return (
            f"--model {spec!r}: cannot import the module {module_name!r} ({error}); it is "
            f"looked for in the current folder ({os.getcwd()}) first, then in the installed "
            "packages: run the command in the folder that holds it, or add its folder to "
            "PYTHONPATH"
        )
    top = (missing or "").partition(".")[0]
    if top and _not_installed(top):
        return (
            f"--model {spec!r}: the module {module_name!r} imports {missing!r}, which is not "
            "installed here; install it in this environment (pip install ...)"
        )
    return _module_raised(spec, module_name, error)


def _not_installed(package: str) -> bool:
    """Whether no top-level ``package`` can be found to import."""
    import importlib.util

    try:
        return importlib.util.find_spec(package) is None
    except (ImportError, ValueError):
        return True


def _module_raised(spec: str, module_name: str, error: BaseException) -> str:
    """The error the module's own code raised while it was imported, in one line."""
    return (
        f"--model {spec!r}: importing the module {module_name!r} raised "
        f"{type(error).__name__}: {error}"
    )


def _call_factory(spec: str, factory: Any) -> Any:
    """Call ``--model``'s callable; a user error, not a traceback, where it cannot be called.

    One that needs arguments, and one whose building imports a package that is not installed.
    """
    import inspect

    if not callable(factory):
        return factory  # the caller reports what it is
    try:
        inspect.signature(factory).bind()
    except TypeError as error:
        raise CLIError(
            f"--model {spec!r} needs arguments ({error}); name a callable that takes none, "
            "e.g. a function in your module: def build(): return MyModel(...)"
        ) from error
    except ValueError:  # no signature to inspect (some builtins): call it and see
        pass
    try:
        return factory()
    except ImportError as error:  # a package the model needs, imported when it is built
        missing = f" {error.name!r}" if error.name else ""
        raise CLIError(
            f"--model {spec!r}: building the model failed to import{missing} ({error}); "
            "install what it needs in this environment (pip install ...)"
        ) from error
    except Exception as error:  # the user's own code: its error, in one line
        raise CLIError(
            f"--model {spec!r}: building the model raised {type(error).__name__}: {error}"
        ) from error


def _timm_model(spec: str, name: str, weights: Path | None) -> LoadedModel:
    """``--model timm:NAME --weights PATH``: timm's architecture with the weights' class count.

    The model is built with ``pretrained=False`` (nothing is downloaded) and as many classes
    as the weights' classifier has; its preprocessing is timm's data config for it
    (`timm_preprocessing`), and a head of ImageNet's classes gets their names.
    """
    from ctc_plugin.files import read_state_dict
    from ctc_plugin.zoo.loading import load_state_into

    timm = _optional_module("timm", spec)
    if not timm.is_model(name):
        raise CLIError(_unknown_timm_model(timm, spec, name))
    weights = _needed_weights(spec, weights, "a timm architecture")
    with _weights_errors(spec, weights):
        state = read_state_dict(weights)
        head = _head_size(state, timm.models.get_pretrained_cfg(name, allow_unregistered=True))
        sized = {} if head is None else {"num_classes": head}
        network = load_state_into(
            timm.create_model(name, pretrained=False, **sized), state, weights
        )
    config = timm.data.resolve_model_data_config(network)
    preprocessing, how = timm_preprocessing(config)
    return LoadedModel(
        network, spec, preprocessing, _timm_classes(network), source=f"timm data config{how}"
    )


def _unknown_timm_model(timm: Any, spec: str, name: str) -> str:
    """The message on a NAME timm does not know: the closest names, and how to list them."""
    import difflib

    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f" (close: {', '.join(close)})" if close else ""
    pattern = f"*{name.split('.')[0][:8]}*"
    return (
        f"--model {spec}: timm has no model {name!r}{hint}; list its names with "
        f"python -c \"import timm; print(timm.list_models('{pattern}'))\""
    )


def _head_size(state: dict[str, torch.Tensor], pretrained_cfg: Any) -> int | None:
    """The class count of the classifier weight in ``state``, as timm's config names it.

    ``None`` when the config names no classifier or ``state`` holds none (loading then says
    what does not fit). A key prefix of a wrapped model (``module.``, ``_orig_mod.``) or of a
    training module that held the model (a Lightning module's ``model.``) is allowed, as
    loading allows it (`ctc_plugin.files.unwrapped_state`).
    """
    from ctc_plugin.files import WRAPPER_PREFIXES

    classifier = getattr(pretrained_cfg, "classifier", None)
    names = [classifier] if isinstance(classifier, str) else list(classifier or ())
    holders = sorted({key.split(".", 1)[0] for key in state})
    prefixes = ("", *WRAPPER_PREFIXES, *(f"{holder}." for holder in holders))
    for key in (f"{prefix}{name}.weight" for name in names for prefix in prefixes):
        if key in state and state[key].dim() >= 1:
            return int(state[key].shape[0])
    return None


def timm_preprocessing(config: dict[str, Any]) -> tuple[ImagePreprocessing, str]:
    """The evaluation transform of a timm data config, the aspect ratio kept; and a remark.

    ``config`` is what ``timm.data.resolve_model_data_config(model)`` returns: the shorter
    side is ``input_size / crop_pct`` (rounded down, as timm does) and the centre crop is
    ``input_size``, with its mean, std and interpolation (``bilinear`` for one
    ``ImagePreprocessing`` has not). timm's ``squash`` and ``border`` crop modes are read as a
    centre crop, which the remark (``""`` otherwise) says.
    """
    import math

    from ctc_plugin.images import INTERPOLATIONS, ImagePreprocessing

    height, width = (int(v) for v in config["input_size"][-2:])
    crop_pct = float(config.get("crop_pct") or 0.875)
    resize = max(height, width, math.floor(max(height, width) / crop_pct))
    interpolation = config.get("interpolation")
    mode = config.get("crop_mode") or "center"
    preprocessing = ImagePreprocessing(
        resize=resize,
        crop=height if height == width else (height, width),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
    )
    remark = "" if mode == "center" else f" (its crop mode {mode} read as a centre crop)"
    return preprocessing, remark


def _timm_classes(network: nn.Module) -> list[str] | None:
    """ImageNet's class names for a timm model whose head has one of its class counts.

    Each class is named by the first of its synonyms (``goldfish``, not ``goldfish, Carassius
    auratus``), as torchvision names them.
    """
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(network)
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    return [info.index_to_description(i).split(",")[0] for i in range(info.num_classes())]


def _huggingface_model(spec: str, folder_name: str, weights: Path | None) -> LoadedModel:
    """``--model hf:FOLDER``: a ``transformers`` image classifier saved with ``save_pretrained``.

    Loaded with ``local_files_only=True`` (nothing is downloaded) and wrapped as a
    pixels-to-logits module; class names from ``config.id2label`` unless they are the default
    ``LABEL_i``, preprocessing from the folder's image processor
    (`huggingface_preprocessing`).
    """
    from ctc_plugin.adapters.huggingface import HuggingFaceClassifier

    if weights is not None:
        raise CLIError(
            f"--model {spec} takes no --weights: the folder holds the model's weights "
            "(save_pretrained writes them there); drop --weights"
        )
    transformers = _optional_module("transformers", spec)
    folder = _saved_model_folder(spec, folder_name)
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(
            folder, local_files_only=True
        )
        preprocessing, note = huggingface_preprocessing(transformers, folder, model.config)
    except (OSError, ValueError, KeyError) as error:
        raise CLIError(
            f"--model {spec}: cannot load an image classifier from {folder} ({error}); "
            "save one there with model.save_pretrained(folder), model being an "
            "AutoModelForImageClassification, and its image processor the same way"
        ) from error
    return LoadedModel(
        HuggingFaceClassifier(model).eval(),
        spec,
        preprocessing,
        _huggingface_classes(model.config),
        source=f"Hugging Face folder {folder}: {note or 'its image processor'}",
        note=note and f"{spec}: {note}",
    )


def _saved_model_folder(spec: str, name: str) -> Path:
    """The folder ``hf:`` names, holding a ``config.json``; a hub name gets what to do."""
    folder = Path(name).expanduser()
    save = (
        "download the model where you can and save it to a folder: "
        "AutoModelForImageClassification.from_pretrained(NAME).save_pretrained(FOLDER) and "
        "AutoImageProcessor.from_pretrained(NAME).save_pretrained(FOLDER), then give "
        "--model hf:FOLDER"
    )
    if not folder.is_dir():
        raise CLIError(
            f"--model {spec}: no folder {name!r} here; hf: takes a local folder written by "
            f"save_pretrained, and nothing is downloaded (a hub name does not work): {save}"
        )
    if not (folder / "config.json").is_file():
        raise CLIError(f"--model {spec}: {folder} holds no config.json, so no saved model: {save}")
    return folder


def huggingface_preprocessing(
    transformers: Any, folder: Path, config: Any
) -> tuple[ImagePreprocessing, str]:
    """The preprocessing of a model saved in ``folder``, and a note when it is a guess.

    With a ``preprocessor_config.json`` in ``folder``: its image processor's
    (`processor_preprocessing`), and the note ``""``. Without one: shorter side 224 and no
    normalisation, or, for a model whose config names one ``image_size``, that size
    centre-cropped (such a model takes no other size); the note says so.
    """
    from ctc_plugin.images import ImagePreprocessing

    if (folder / "preprocessor_config.json").is_file():
        processor = transformers.AutoImageProcessor.from_pretrained(
            folder, local_files_only=True, use_fast=True
        )
        return processor_preprocessing(processor), _patch_budget_note(processor)
    size = getattr(config, "image_size", None)
    fixed = isinstance(size, int) and size > 0
    preprocessing = ImagePreprocessing(resize=size if fixed else 224, crop=size if fixed else None)
    return preprocessing, (
        f"no preprocessor_config.json, so {preprocessing.describe()} and no normalisation; "
        "give --mean R G B --std R G B if the model expects normalised input (or save its "
        "image processor there with save_pretrained)"
    )


def processor_preprocessing(processor: Any) -> ImagePreprocessing:
    """A ``transformers`` image processor's resize, centre crop and normalisation.

    The aspect ratio is kept: a ``{"height", "width"}`` size (which the processor squashes the
    image to) becomes that size centre-cropped from the image resized to its larger side; a
    ``crop_pct`` (ConvNeXt below 384 pixels, PoolFormer) resizes to ``size / crop_pct``
    before the crop; ``crop_size`` with ``do_center_crop`` is the crop. A processor that fits
    each image into a budget of patches (SigLIP 2's ``max_num_patches`` of ``patch_size``
    pixels, keeping its aspect ratio) gives the square that budget fills: the image's centre
    square resized to ``patch_size * isqrt(max_num_patches)`` pixels (what it makes of a square
    image). The rescale and normalisation become one mean and std on pixels in [0, 1]
    (`_processor_normalisation`); ``resample`` gives the interpolation.
    """
    from ctc_plugin.images import ImagePreprocessing

    budget = _patch_budget_side(processor)
    size = _size_dict(processor.size) if getattr(processor, "do_resize", True) else {}
    if budget is not None:
        size = {"height": budget, "width": budget}
    crop = _size_dict(getattr(processor, "crop_size", None))
    fixed = (size["height"], size["width"]) if {"height", "width"} <= size.keys() else None
    resize = size.get("shortest_edge") or (max(fixed) if fixed else None)
    crop_pct = getattr(processor, "crop_pct", None)
    if crop_pct and resize and resize < 384:
        fixed, resize = fixed or (resize, resize), int(resize / crop_pct)
    if getattr(processor, "do_center_crop", False) and {"height", "width"} <= crop.keys():
        fixed = (crop["height"], crop["width"])
    if fixed and resize:
        resize = max(resize, *fixed)
    mean, std = _processor_normalisation(processor)
    return ImagePreprocessing(
        resize=resize,
        crop=None if fixed is None else fixed[0] if fixed[0] == fixed[1] else fixed,
        mean=mean,
        std=std,
        interpolation=RESAMPLING.get(
            _int_or_none(getattr(processor, "resample", None)), "bilinear"
        ),
    )


def _processor_normalisation(processor: Any) -> tuple[Any, Any]:
    """A processor's rescale and normalisation as ``(mean, std)`` on pixels in [0, 1].

    The processor computes ``((v * rescale_factor - offset) - image_mean) / image_std`` from
    8-bit values ``v = 255 p`` (``do_rescale``, ``rescale_offset``: EfficientNet's ``- 1``;
    ``do_normalize``), and EfficientNet's ``include_top`` divides by ``image_std`` once more.
    That is ``(p - mean) / std`` with ``mean = (image_mean + offset) / (255 rescale_factor)``
    and ``std = image_std * (image_std if include_top) / (255 rescale_factor)``; ``(None,
    None)`` where it leaves the pixels as they are.
    """
    normalize = getattr(processor, "do_normalize", False) and (
        getattr(processor, "image_mean", None) is not None
    )
    mean = _three(processor.image_mean) if normalize else (0.0, 0.0, 0.0)
    std = _three(processor.image_std) if normalize else (1.0, 1.0, 1.0)
    rescale = getattr(processor, "do_rescale", True)
    factor = float(getattr(processor, "rescale_factor", 1 / 255)) if rescale else 1.0
    offset = 1.0 if rescale and getattr(processor, "rescale_offset", False) else 0.0
    if getattr(processor, "include_top", False) and getattr(processor, "image_std", None):
        std = tuple(s * t for s, t in zip(std, _three(processor.image_std)))
    scale = 255 * factor
    if not normalize and offset == 0 and std == (1.0, 1.0, 1.0) and math.isclose(scale, 1):
        return None, None
    return tuple((m + offset) / scale for m in mean), tuple(s / scale for s in std)


def _patch_budget_side(processor: Any) -> int | None:
    """The side of the square a patch-budget processor (``max_num_patches``) fills, else None."""
    patches, patch = (_int_or_none(getattr(processor, k, None)) for k in _PATCH_BUDGET)
    if not getattr(processor, "do_resize", True) or not patches or not patch:
        return None
    return patch * math.isqrt(patches)


#: The attributes of a processor that fits images into a budget of patches (SigLIP 2's).
_PATCH_BUDGET = ("max_num_patches", "patch_size")


def _patch_budget_note(processor: Any) -> str:
    """What a patch-budget processor would do otherwise, where the run takes a centre square."""
    side = _patch_budget_side(processor)
    if side is None:
        return ""
    return (
        f"its image processor fits each photo into {processor.max_num_patches} patches keeping "
        f"its aspect ratio; here every photo's centre square, {side} x {side} pixels (give "
        "--resize/--crop for another view, in multiples of the patch size)"
    )


#: Pillow's resampling filters (``transformers``' ``resample``) by value, as interpolations.
RESAMPLING = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _size_dict(size: Any) -> dict[str, int]:
    """A processor's ``size`` or ``crop_size`` as a dict of the values it sets."""
    from collections.abc import Mapping

    if not isinstance(size, Mapping):
        return {}
    return {key: int(value) for key, value in size.items() if value is not None}


def _three(values: Any) -> tuple[float, float, float]:
    """A processor's mean or std as three values (one value stands for every channel)."""
    values = [float(v) for v in values] if isinstance(values, (list, tuple)) else [float(values)]
    return tuple(values * 3 if len(values) == 1 else values)  # type: ignore[return-value]


def _int_or_none(value: Any) -> int | None:
    """``int(value)``, or ``None`` for a value that is none (a processor without ``resample``)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _huggingface_classes(config: Any) -> list[str] | None:
    """``config.id2label`` by index, or ``None`` for the default names ``LABEL_0``, ..."""
    labels = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
    return None if labels == [f"LABEL_{i}" for i in range(len(labels))] else labels


# ---------------------------------------------------------------- shared by the model sources
def _optional_module(name: str, spec: str) -> Any:
    """Import the optional dependency ``name`` that ``--model spec`` needs.

    Raises:
        CLIError: If it is not installed (saying ``pip install name``), or is but fails to
            import (saying what failed).
    """
    from ctc_plugin.adapters.optional import require

    try:
        return require(name, name, f"--model {spec}")
    except ImportError as error:
        raise CLIError(str(error)) from error


def _needed_weights(spec: str, weights: Path | None, what: str) -> Path:
    """``--weights``, which ``spec`` (``what`` it is) needs: nothing is downloaded."""
    if weights is None:
        raise CLIError(
            f"--model {spec} is {what}: give its weights with --weights PATH (a state-dict "
            "file, torch.save(model.state_dict(), PATH); nothing is downloaded)"
        )
    return weights


@contextmanager
def _weights_errors(spec: str, weights: Path | None) -> Iterator[None]:
    """Weights that cannot be read or do not fit, as one line naming both options.

    Without ``--weights`` (a zoo model's shipped file) errors pass through unchanged.
    """
    try:
        yield
    except ValueError as error:
        if weights is None:
            raise
        raise CLIError(f"--model {spec} --weights {weights}: {error}") from error


def _did_you_mean(name: str) -> str:
    """``" (did you mean 'resnet18'?)"`` for a name close to a zoo or torchvision model name."""
    import difflib

    import torchvision.models

    from ctc_plugin.zoo.settings import FAMILIES

    names = [*FAMILIES, *torchvision.models.list_models(module=torchvision.models)]
    plain = {known.replace("_", "").lower(): known for known in names}
    spelled = name.replace("-", "").replace("_", "").lower()
    close = [plain[spelled]] if spelled in plain else []
    close = close or difflib.get_close_matches(name.lower(), names, n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def is_zoo_spec(name: str) -> bool:
    """Whether ``--model`` names a zoo model (``resnet``, ``resnet-composite``)."""
    from ctc_plugin.zoo.settings import FAMILIES

    return name.partition("-")[0] in FAMILIES


def is_callable_spec(name: str) -> bool:
    """Whether ``--model`` names ``module:callable`` (not ``timm:``/``hf:`` or a model name)."""
    prefix, colon, _ = name.partition(":")
    return bool(colon) and prefix not in PREFIXED_SOURCES


def load_model(name: str, weights: Path | None) -> LoadedModel:
    """Resolve ``--model`` / ``--weights``.

    ``weights`` is a readable file (``--weights`` checks it while parsing).

    Raises:
        CLIError: Unknown model names and missing zoo weights, naming the flag to fix.
    """
    import torchvision.models

    from ctc_plugin.zoo.settings import FAMILIES

    prefix, colon, rest = name.partition(":")
    if colon and prefix in PREFIXED_SOURCES:  # before module:callable: timm:, hf: are ours
        return PREFIXED_SOURCES[prefix](name, rest, weights)
    if is_callable_spec(name):
        return _callable_model(name, weights)
    if is_zoo_spec(name):
        return _zoo_model(name, weights)
    if name in torchvision.models.list_models(module=torchvision.models):
        return _torchvision_model(name, weights)
    if Path(name).is_file():
        raise CLIError(
            f"--model {name!r} is a file: name the architecture with --model and give the "
            f"file with --weights (e.g. --model resnet18 --weights {name}), or build the model "
            "in --model module:callable"
        )
    raise CLIError(
        f"--model: unknown model {name!r}{_did_you_mean(name)}; use a zoo family "
        f"({', '.join(FAMILIES)}), "
        "a torchvision architecture with --weights PATH, timm:NAME with --weights PATH, "
        "hf:FOLDER, or module:callable"
    )


#: ``--model PREFIX:REST`` sources, tried before ``module:callable`` (so a module named
#: ``timm`` or ``hf`` cannot be given as ``module:callable``).
PREFIXED_SOURCES = {"timm": _timm_model, "hf": _huggingface_model}
