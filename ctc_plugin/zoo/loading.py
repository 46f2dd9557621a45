"""Building zoo models, loading the shipped weights, and loading torchvision weights from disk."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctc_plugin.datasets.splits import SPLITS, check_split
from ctc_plugin.files import read_state_dict, short_load_error, unwrapped_state
from ctc_plugin.inputs import is_integer
from ctc_plugin.weights import classifier_path
from ctc_plugin.zoo.models import ARCHITECTURES
from ctc_plugin.zoo.settings import FAMILIES as FAMILIES


def check_family(family: str) -> None:
    """Raise a ValueError naming the families unless ``family`` is one of them."""
    if family not in ARCHITECTURES:
        raise ValueError(f"unknown model family {family!r}; expected one of {list(FAMILIES)}")


def build(family: str, num_classes: int) -> nn.Module:
    """Return an untrained model of ``family``.

    Args:
        family: One of [`FAMILIES`][ctc_plugin.zoo.FAMILIES].
        num_classes: Number of output logits.

    Raises:
        ValueError: For an unknown family, or a class count that is not a positive whole number.
    """
    check_family(family)
    if not is_integer(num_classes):
        raise ValueError(f"num_classes must be a whole number, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    return ARCHITECTURES[family](int(num_classes))


def weights_path(family: str, split: str = "shapes") -> Path:
    """Return the path of the shipped weight file of ``family`` trained on ``split``.

    The file names belong to [`ctc_plugin.weights`][ctc_plugin.weights]; this checks the family
    and split first.

    Raises:
        ValueError: For an unknown family or split.
    """
    check_family(family)
    check_split(split)
    return classifier_path(family, split)


def load_state_into(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    path: Path,
    hint: Callable[[], str] | None = None,
) -> nn.Module:
    """Load ``state`` (read from ``path``) into ``model``; return it in eval mode.

    The key prefix of a wrapped model's state dict (``module.`` from ``nn.DataParallel`` or
    ``DistributedDataParallel``, ``_orig_mod.`` from ``torch.compile``) and the name of a
    training module's attribute that held the model (Lightning's ``model.``) are dropped
    first (see [`unwrapped_state`][ctc_plugin.files.unwrapped_state]).

    Raises:
        ValueError: ``weights in <path> do not fit the model: <torch's list of differences>``,
            each list cut to its count and first keys, then what ``hint()`` says (asked only
            then); for a file written by
            [`Explainer.save`][ctc_plugin.Explainer.save] it says so and what to give instead.
    """
    try:
        model.load_state_dict(unwrapped_state(model, state))
    except RuntimeError as error:
        raise ValueError(
            f"weights in {path} do not fit the model: {short_load_error(str(error))}"
            f"{hint() if hint else ''}{_explainer_file_hint(path)}"
        ) from error
    return model.eval()


def _explainer_file_hint(path: Path) -> str:
    """A sentence on what to do when ``path`` is an Explainer file ("" for other files)."""
    from ctc_plugin.explainer.network import FILE_FORMAT
    from ctc_plugin.files import read_data_file

    try:
        payload = read_data_file(path, "weights")
    except (OSError, ValueError):
        return ""
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
        return ""
    metadata = payload.get("metadata")
    model = metadata.get("model") if isinstance(metadata, dict) else None
    trained = f" trained for the {model} model" if isinstance(model, str) else ""
    return (
        f" The file is an Explainer file{trained} (written by Explainer.save), not a "
        "classifier's weights: give the classifier's own weight file (a state dict, "
        "torch.save(model.state_dict(), path)), and read Explainer files with "
        "ctc_plugin.Explainer.load."
    )


def load(family: str, split: str = "shapes", weights: str | Path | None = None) -> nn.Module:
    """Return a trained zoo model in eval mode.

    Args:
        family: One of [`FAMILIES`][ctc_plugin.zoo.FAMILIES].
        split: The data set the model was trained on, ``"shapes"`` or ``"composite"``.
        weights: A weight file to use instead of the shipped one (a state dict; one saved from
            an ``nn.DataParallel`` or ``torch.compile`` model, keys prefixed ``module.`` or
            ``_orig_mod.``, and a Lightning checkpoint's ``model.`` keys load too).

    Returns:
        The model; it takes ``ShapesDataset`` images as they are and returns logits.

    Raises:
        ValueError: For an unknown family or split, weights that do not fit, an unreadable
            file (empty, truncated or corrupt, not a ``torch.save`` file, objects other than
            tensors), or a shipped file whose sha256 differs from the manifest (damaged: the
            message gives both digests and says to reinstall the package).
        FileNotFoundError: When the weight file is missing (train it with
            ``ctc-plugin zoo train FAMILY --split SPLIT``).
    """
    num_classes = len(check_split(split))
    path = Path(weights).expanduser() if weights is not None else weights_path(family, split)
    model = build(family, num_classes)
    if not path.exists():  # a folder or a damaged file gets read_state_dict's message
        raise FileNotFoundError(
            f"weights file not found: {path}; train it with "
            f"`ctc-plugin zoo train {family} --split {split}` or pass --weights PATH"
        )
    state = read_state_dict(path)
    return load_state_into(model, state, path, lambda: _split_hint(model, state, split))


def _split_hint(model: nn.Module, state: dict[str, torch.Tensor], split: str) -> str:
    """A sentence naming the split whose class count the weights' head has ("" if none fits).

    Weights trained on one split given with another differ from the model in the head only.
    """
    classes = head_classes(model, unwrapped_state(model, state))
    others = [name for name, names in SPLITS.items() if name != split and len(names) == classes]
    if not others:
        return ""
    return (
        f" The file's head has {classes} classes, as the {others[0]!r} split has, not the "
        f"{len(SPLITS[split])} of {split!r}: were these weights trained on {others[0]!r}? "
        f"Load them with split {others[0]!r}."
    )


def load_torchvision(arch: str, weights_path: str | Path, **kwargs: Any) -> nn.Module:
    """Build a torchvision architecture and load its weights from a local file.

    No download happens: the architecture is built with ``weights=None`` and the state dict is
    read with ``torch.load(..., weights_only=True)``. The model expects images normalised the way
    its weights were trained (for ImageNet weights, torchvision's mean/std). A state dict saved
    from a wrapped model (``nn.DataParallel``, ``DistributedDataParallel``: keys prefixed
    ``module.``; ``torch.compile``: ``_orig_mod.``) loads as well, and so does a Lightning
    checkpoint's (the model's keys under the attribute that held it, ``model.``).

    Args:
        arch: A torchvision classification builder name, e.g. ``"resnet18"`` or ``"vgg16_bn"``.
        weights_path: The ``.pth`` file holding the state dict (as torchvision publishes them).
        **kwargs: Passed to the builder (e.g. ``num_classes``). Without ``num_classes`` the
            class count is the weights' own: a fine-tuned head (say 10 classes instead of
            ImageNet's 1000) is built to fit them. GoogLeNet and Inception-v3 are built as
            torchvision builds them for its weights: ``transform_input=True`` (the first layer
            takes ImageNet-normalised images as those weights were trained; pass
            ``transform_input=False`` for weights trained without it), ``init_weights=False``,
            and ``aux_logits`` as the file holds the auxiliary heads or not.

    Returns:
        The model in eval mode.

    Raises:
        ValueError: For an unknown architecture, weights that do not fit or an unreadable file
            (see [`read_state_dict`][ctc_plugin.files.read_state_dict]).
        FileNotFoundError: If the weights file does not exist.
    """
    import torchvision.models

    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        close = difflib.get_close_matches(str(arch), names, n=3)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise ValueError(
            f"unknown torchvision architecture {arch!r}; {hint}"
            "see torchvision.models.list_models() for every name"
        )
    path = Path(weights_path)
    state = read_state_dict(path)
    if arch in _AUXILIARY_HEADS:  # as torchvision's builder sets them for its weights
        heads = _AUXILIARY_HEADS[arch]  # at the top, or under a wrapper's prefix (module.)
        holds = any(part in heads for key in state for part in key.split(".")[:3])
        kwargs = {"transform_input": True, "init_weights": False, "aux_logits": holds, **kwargs}
    if arch.startswith("vit_") and "image_size" not in kwargs:
        size = _vit_image_size(state)
        if size is not None:  # a ViT fine-tuned at another size (384, as SWAG's weights are)
            kwargs = {"image_size": size, **kwargs}
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    state = unwrapped_state(model, state)
    classes = None if "num_classes" in kwargs else head_classes(model, state)
    if classes is not None:
        model = torchvision.models.get_model(arch, weights=None, num_classes=classes, **kwargs)
    return load_state_into(model, state, path)


def _vit_image_size(state: dict[str, Any]) -> int | None:
    """The image side a torchvision ViT's state dict was made for, from its position embedding.

    ``None`` where the keys are not there or the token count is no square plus a class token.
    """
    import math

    position = next((v for k, v in state.items() if k.endswith("encoder.pos_embedding")), None)
    patches = next((v for k, v in state.items() if k.endswith("conv_proj.weight")), None)
    if position is None or patches is None or position.dim() != 3 or patches.dim() != 4:
        return None
    side = math.isqrt(int(position.shape[1]) - 1)
    if side * side != int(position.shape[1]) - 1:
        return None
    return side * int(patches.shape[-1])


#: The auxiliary classifiers of the torchvision architectures that have them.
_AUXILIARY_HEADS = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}


def head_classes(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The class count of a state dict that differs from ``model`` in its class heads only.

    The tensors whose shapes differ must differ in their first dimension only (the outputs of
    a linear or 1x1 convolution head, and its bias), all with the same new size; ``None`` when
    nothing differs or something else does (loading then says what).
    """
    own = model.state_dict()
    differing = [k for k in own if k in state and own[k].shape != state[k].shape]
    if not differing:
        return None
    sizes = {state[k].shape[0] for k in differing if state[k].dim() >= 1}
    if len(sizes) != 1 or any(
        state[k].dim() != own[k].dim() or state[k].shape[1:] != own[k].shape[1:] for k in differing
    ):
        return None
    return sizes.pop()
