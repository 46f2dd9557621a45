"""Module paths as the user's model names them, also behind steps the package put in front of it.

[`ImagePreprocessing.wrap`][ctc_plugin.images.ImagePreprocessing.wrap] (and so the
``ctc-plugin`` command, which runs every model that way) makes a model take pixels in [0, 1] by
running it as ``nn.Sequential(Normalize, model)``, a
[`WrappedModel`][ctc_plugin.module_paths.WrappedModel]. Inside it every module path would carry
the wrapper's index (``1.features.3`` for the model's ``features.3``), a path the user's model
does not have. The methods name
modules in their messages through [`path_as_given`][ctc_plugin.module_paths.path_as_given]
(CTC's refusals, Integrative CAM's layers, the eval-mode check, Grad-CAM's layer): the paths
of the model that was wrapped.

torch's own wrappers hold the model one level down too: ``nn.DataParallel`` and
``DistributedDataParallel`` as ``module``, ``torch.compile``'s ``OptimizedModule`` as
``_orig_mod`` ([`held_inside`][ctc_plugin.module_paths.held_inside]). Their level is left out of
the paths given, wherever in the model such a wrapper sits (``backbone._orig_mod.layer1`` is
``backbone.layer1``).

Only torch is imported: every method's checks import this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

__all__ = [
    "WrappedModel",
    "held_inside",
    "module_path",
    "named_modules_as_given",
    "path_as_given",
    "path_without_wrappers",
    "unwrapped",
    "unwrapping",
]

#: How the steps in front of a wrapped model are named in messages.
INPUT_STEP = "(input step)"


class WrappedModel(nn.Sequential):
    """``nn.Sequential(step, ..., model)``: a model behind input steps the package put in front.

    It computes, saves and loads exactly as the ``nn.Sequential`` it is (its state dict's keys
    are ``0.mean``, ``1.conv.weight``, ...); only the module paths messages give differ: those
    of the model, its last child (`path_as_given`). A model wrapped twice (a loader's own
    ``ImagePreprocessing.wrap`` wrapped again by the command) is named through both.
    """

    @property
    def model(self) -> nn.Module:
        """The wrapped model: the last child (itself a `WrappedModel` where wrapped twice)."""
        return self[-1]


def held_inside(module: object) -> str | None:
    """The child in which ``module``, a wrapper torch puts around a model, holds that model.

    ``"module"`` for ``nn.DataParallel`` and ``DistributedDataParallel``, ``"_orig_mod"`` for
    the ``OptimizedModule`` that ``torch.compile(model)`` returns; ``None`` for anything else
    (also a model compiled in place, ``model.compile()``, which wraps nothing).
    """
    if isinstance(module, nn.DataParallel | nn.parallel.DistributedDataParallel):
        return "module"
    if isinstance(getattr(module, "_orig_mod", None), nn.Module):  # torch.compile
        return "_orig_mod"
    return None


def unwrapped(forward_func: Any) -> Any:
    """The model inside ``nn.DataParallel``, ``DistributedDataParallel`` and ``torch.compile``.

    Each method takes its model through this: the model inside computes what the wrapper
    computes on one device (a compiled model's numbers are meant to be its eager model's;
    ``DataParallel`` on one device, or on none, calls the model it holds), and the methods run
    its Python code anyway (the wrappers hold the same parameters, under prefixed keys:
    ``module.``, ``_orig_mod.``). Anything else (a model, a model compiled in place with
    ``model.compile()``, a bound method, a function) is returned as it is (see
    [`held_inside`][ctc_plugin.module_paths.held_inside]).
    """
    return unwrapping(forward_func)[0]


def unwrapping(forward_func: Any) -> tuple[Any, list[nn.Module]]:
    """[`unwrapped`][ctc_plugin.module_paths.unwrapped] and the wrappers it took off.

    Returns:
        The model inside, and torch's wrappers around it, outermost first (``[]`` where
        ``forward_func`` is no such wrapper): what a note that it was unwrapped names.
    """
    wrappers = []
    while (inside := held_inside(forward_func)) is not None:
        wrappers.append(forward_func)
        forward_func = getattr(forward_func, inside)
    return forward_func, wrappers


def path_as_given(root: object, path: str) -> str:
    """``path``, a name from ``root.named_modules()`` (or its parameters, buffers), as given.

    The level of torch's wrappers ([`held_inside`][ctc_plugin.module_paths.held_inside]) is
    left out wherever they sit (``module.features.3`` and ``_orig_mod.features.3`` are
    ``features.3``). Within a [`WrappedModel`][ctc_plugin.module_paths.WrappedModel] (``root``
    or inside such a wrapper), the paths of the wrapped model's own modules lose the wrapper's
    index (``1.features.3`` is ``features.3``, ``1`` is the model itself: ``""``) and the steps
    in front are ``(input step)`` (numbered where there are several). Wrappers within wrappers
    lose every index, their steps numbered in the order the input meets them
    (``1.1.features.3`` is ``features.3``, ``1.0`` is ``(input step 2)``). Any other ``root``
    (a model, a bound method, a function) keeps ``path``.
    """
    return _given(root, path, name_steps=True)


def path_without_wrappers(root: object, path: str) -> str:
    """``path`` within ``root`` with the level of torch's wrappers left out, nothing else.

    As in [`path_as_given`][ctc_plugin.module_paths.path_as_given], wherever such a wrapper
    sits (``blocks.0._orig_mod.conv.weight`` is ``blocks.0.conv.weight``), but the indices of a
    [`WrappedModel`][ctc_plugin.module_paths.WrappedModel] are kept: the state-dict keys a
    model has whether or not parts of it are compiled or wrapped (its weights' digest).
    """
    return _given(root, path, name_steps=False)


def _given(root: object, path: str, name_steps: bool) -> str:
    """`path_as_given` (``name_steps``: a WrappedModel's steps named), `path_without_wrappers`."""
    if not isinstance(root, nn.Module) or not path:
        return path
    numbered = name_steps and _input_steps(root) > 1  # only named steps are numbered
    steps = 0  # the input steps of the wrappers passed so far
    given: list[str] = []
    module: nn.Module | None = root
    parts = path.split(".")
    for index, part in enumerate(parts):
        if module is None:  # a parameter's or buffer's name, or a name the model does not give
            given.extend(parts[index:])
            break
        children = module._modules  # a mapping (TorchScript's has no .get)
        child = children[part] if part in children else None
        if part == held_inside(module):
            pass  # torch's wrapper: its model's paths are the model's own
        elif name_steps and isinstance(module, WrappedModel) and not given and part.isdigit():
            if int(part) == len(module) - 1:  # the model, or the wrapper within
                steps += int(part)
            else:  # a step in front of the model
                given.append(f"(input step {steps + int(part) + 1})" if numbered else INPUT_STEP)
        else:
            given.append(part)
        module = child
    return ".".join(given)


def _input_steps(root: object) -> int:
    """How many input steps the wrappers of ``root`` put in front of the model, in all."""
    steps = 0
    while isinstance(root, nn.Module):
        if isinstance(root, WrappedModel):
            steps, root = steps + len(root) - 1, root.model
        elif held_inside(root):
            root = getattr(root, held_inside(root))
        else:
            break
    return steps


def named_modules_as_given(root: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``root.named_modules()``, each path as given (`path_as_given`).

    A wrapper and the model it wraps are all ``""``; the outermost wrapper comes first.
    """
    for path, module in root.named_modules():
        yield path_as_given(root, path), module


def module_path(root: nn.Module, module: nn.Module) -> str | None:
    """The path of ``module`` within ``root``, as given (``""``: the model); ``None`` outside it."""
    return next((path for path, held in named_modules_as_given(root) if held is module), None)
