"""Hugging Face ``transformers`` image classifiers as the tensor-to-logits models Captum expects.

A ``transformers`` model takes ``pixel_values`` and returns an ``ImageClassifierOutput``; Captum,
CTC and Integrative CAM call ``forward_func(x)`` and read a tensor of logits.
[`HuggingFaceClassifier`][ctc_plugin.adapters.huggingface.HuggingFaceClassifier] wraps the model
as an ``nn.Module`` (so that Integrative CAM and the Zennit composite see its modules) whose
forward returns the logits:

```python
from transformers import AutoModelForImageClassification
from ctc_plugin import CTC
from ctc_plugin.adapters.huggingface import HuggingFaceClassifier

model = HuggingFaceClassifier(AutoModelForImageClassification.from_pretrained(name).eval())
scores = CTC(model).attribute(pixel_values, target=label, feature_mask=segments)
```

``transformers`` is not imported here: any module whose output carries ``logits`` works. A
SigLIP 2 classifier (``Siglip2ForImageClassification``, whose processor cuts images into a
sequence of patches) is given its images cut as its processor cuts them, with their patch grid
as ``spatial_shapes``, so it too maps (N, C, H, W) pixel values to logits.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from typing import Any

import torch
from torch import nn

from ctc_plugin.inputs import PATCH_SEQUENCE_MODELS


class HuggingFaceClassifier(nn.Module):
    """A ``transformers`` image classifier whose forward maps pixel values to logits.

    Args:
        model: The classifier (``ViTForImageClassification``, ``ConvNextForImageClassification``,
            ``AutoModelForImageClassification.from_pretrained(...)``, ...); it stays a submodule,
            so ``.eval()``, ``.double()`` and hooks reach it.
        **inputs: Further keyword arguments for every call (``interpolate_pos_encoding=True``
            for images of another size than the model was trained on).

    Raises:
        TypeError: If ``model`` is no module or its forward takes no ``pixel_values`` (a model
            that returns logits needs no wrapper), or ``inputs`` holds what the wrapper passes
            itself (``pixel_values``, SigLIP 2's ``spatial_shapes``) or ``return_dict=False``, or
            names a keyword the model's forward does not take (``transformers`` models take
            unknown keywords into ``**kwargs`` and ignore them, so a misspelt
            ``interpolate_pos_encodings=True`` would change nothing); at a call, if the
            model's output is a tensor or has no ``logits`` tensor.
    """

    def __init__(self, model: nn.Module, **inputs: Any) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"HuggingFaceClassifier wraps a torch module; got {type(model).__name__}"
            )
        if not _takes_pixel_values(model):
            raise TypeError(
                f"{type(model).__name__}.forward takes no pixel_values (HuggingFaceClassifier "
                "calls model(pixel_values=...)): a model that returns its logits as a tensor "
                "needs no wrapper; pass the model itself to the methods"
            )
        self.model = model
        self.training = model.training  # its own flag only: the wrapped modules keep theirs
        self.inputs = inputs
        self.patch_size = patch_sequence_size(model)
        given = sorted(set(inputs) & {"pixel_values", "spatial_shapes", "pixel_attention_mask"})
        if given:
            raise TypeError(
                f"HuggingFaceClassifier passes the images itself; drop {given} from its "
                "keyword arguments (they are for further options of every call)"
            )
        if inputs.get("return_dict") is False:
            raise TypeError(
                "HuggingFaceClassifier reads the logits off the model's output object; drop "
                "return_dict=False from its keyword arguments (a tuple output has no logits)"
            )
        _check_keywords(model, inputs)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The model's logits (N, classes) for ``pixel_values`` (N, C, H, W).

        Raises:
            ValueError: For a SigLIP 2 model, images whose sides are no multiples of its patch
                size.
        """
        output = self.model(**self.model_inputs(pixel_values), **self.inputs)
        logits = getattr(output, "logits", None)
        if isinstance(output, torch.Tensor):
            raise TypeError(
                f"{type(self.model).__name__} already returns a tensor {tuple(output.shape)}, "
                "not an output object with logits: pass the model itself to the methods, "
                "without HuggingFaceClassifier (it is for transformers models)"
            )
        if not isinstance(logits, torch.Tensor):
            raise TypeError(
                f"{type(self.model).__name__} returned {type(output).__name__}, which has no "
                "logits tensor; wrap an image classification model (a *ForImageClassification "
                "class), or write a forward function that returns the logits"
            )
        return logits

    def model_inputs(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The image inputs the wrapped model is called with.

        ``pixel_values`` as they are, or cut into patches for a model that takes patch
        sequences (`patch_sequence`).

        Raises:
            ValueError: For a SigLIP 2 model, images whose sides are no multiples of its patch
                size.
        """
        if self.patch_size is None:
            return {"pixel_values": pixel_values}
        return patch_sequence(pixel_values, self.patch_size)


def _takes_pixel_values(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes ``pixel_values`` (by name, or among any keywords).

    ``True`` where its signature cannot be read: the call then tells.
    """
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return True
    return "pixel_values" in parameters or any(
        parameter.kind is parameter.VAR_KEYWORD for parameter in parameters.values()
    )


def _check_keywords(model: nn.Module, inputs: dict[str, Any]) -> None:
    """Refuse keywords ``model.forward`` does not take (see `_forward_keywords`).

    Where the forward also takes keywords it does not name (a plain ``**kwargs``), only a name
    close to one it names is refused, as a likely misspelling: the others may be read.

    Raises:
        TypeError: For such a keyword, naming the ones the forward takes.
    """
    listed, accepted, takes_others = _forward_keywords(model)
    for name in sorted(set(inputs) - accepted):
        close = difflib.get_close_matches(name, sorted(accepted), n=1, cutoff=0.8)
        if takes_others and not close:
            continue
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise TypeError(
            f"{type(model).__name__}.forward takes no keyword {name!r} ({hint}it names "
            f"{', '.join(listed)}); HuggingFaceClassifier passes its keyword arguments to "
            "every call of the model"
        )


def _forward_keywords(model: nn.Module) -> tuple[list[str], set[str], bool]:
    """The keywords ``model.forward`` names, those it takes, and whether it takes any other.

    A ``**kwargs: Unpack[SomeTypedDict]`` (``transformers``' ``TransformersKwargs``) takes its
    keys; a plain ``**kwargs`` takes any keyword (``transformers`` models ignore the ones they
    do not read, so only names close to a known one are refused), and so does a decorated
    forward (``transformers``' decorators take ``return_dict`` and ``use_cache`` besides the
    signature they show). Any keyword where the signature cannot be read.
    """
    try:
        parameters = inspect.signature(model.forward, eval_str=True).parameters
    except Exception:  # noqa: BLE001 - annotations that do not evaluate: read them unevaluated
        try:
            parameters = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            return [], set(), True
    listed = [
        name
        for name, parameter in parameters.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]
    accepted = set(listed)
    takes_others = hasattr(model.forward, "__wrapped__")
    for parameter in parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            typed = _typed_dict_keys(parameter.annotation)
            takes_others = takes_others or typed is None
            accepted |= typed or set()
    return listed, accepted, takes_others


def _typed_dict_keys(annotation: Any) -> set[str] | None:
    """The keys of ``Unpack[SomeTypedDict]``, else ``None`` (any keyword).

    ``typing``'s or ``typing_extensions``' forms (Python 3.10 has no ``typing.Unpack``, and
    ``typing_extensions.TypedDict`` is a class of its own there and in 3.11).
    """
    import typing_extensions

    unpack = {typing_extensions.Unpack, getattr(typing, "Unpack", typing_extensions.Unpack)}
    if typing_extensions.get_origin(annotation) not in unpack:
        return None
    (typed_dict,) = typing_extensions.get_args(annotation)
    if not typing_extensions.is_typeddict(typed_dict):
        return None
    return set(typed_dict.__required_keys__) | set(typed_dict.__optional_keys__)


def patch_sequence_size(model: nn.Module) -> int | None:
    """The patch size of a model that takes images as sequences of patches, else ``None``."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PATCH_SEQUENCE_MODELS:
        return None
    return int(getattr(config, "vision_config", config).patch_size)


def patch_sequence(pixel_values: torch.Tensor, patch_size: int) -> dict[str, torch.Tensor]:
    """Images cut into patches as SigLIP 2's image processor cuts them: the model's inputs.

    (N, C, H, W) -> ``pixel_values`` (N, H/p * W/p, p * p * C): the patches in row-major order,
    each its pixels row by row with their channels last; ``spatial_shapes`` ``[[H/p, W/p]]``
    (one row: the images of a batch share their size, and the model's positional embeddings for
    one row broadcast over the batch). No ``pixel_attention_mask``: no patch is padding.

    Raises:
        ValueError: A side that is no multiple of ``patch_size``.
    """
    if pixel_values.dim() != 4:
        raise ValueError(
            f"expected images (N, C, H, W) to cut into patches, got {tuple(pixel_values.shape)}"
        )
    count, channels, height, width = pixel_values.shape
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"images of {height} x {width} pixels do not divide into the model's {patch_size} x "
            f"{patch_size} patches; resize them to multiples of {patch_size}"
        )
    rows, columns = height // patch_size, width // patch_size
    patches = (
        pixel_values.permute(0, 2, 3, 1)
        .reshape(count, rows, patch_size, columns, patch_size, channels)
        .permute(0, 1, 3, 2, 4, 5)
        .reshape(count, rows * columns, patch_size * patch_size * channels)
    )
    shapes = torch.tensor([[rows, columns]], device=pixel_values.device)
    return {"pixel_values": patches, "spatial_shapes": shapes}


__all__ = [
    "PATCH_SEQUENCE_MODELS",
    "HuggingFaceClassifier",
    "patch_sequence",
    "patch_sequence_size",
]
