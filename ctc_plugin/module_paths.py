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

Only torch is imported: every method's checks import this module.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

__all__ = ["WrappedModel", "module_path", "named_modules_as_given", "path_as_given"]

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


def path_as_given(root: object, path: str) -> str:
    """``path``, a name from ``root.named_modules()`` (or its parameters, buffers), as given.

    Within a [`WrappedModel`][ctc_plugin.module_paths.WrappedModel], the paths of the wrapped
    model's own modules lose the wrapper's index (``1.features.3`` is ``features.3``, ``1`` is
    the model itself: ``""``) and the steps in front are ``(input step)`` (numbered where there
    are several). Wrappers within wrappers lose every index, their steps numbered in the order
    the input meets them (``1.1.features.3`` is ``features.3``, ``1.0`` is ``(input step 2)``).
    Any other ``root`` (a model, a bound method, a function) keeps ``path``.
    """
    steps, numbered = 0, _input_steps(root) > 1
    while isinstance(root, WrappedModel):
        head, dot, rest = path.partition(".")
        if not head.isdigit():
            return path  # a wrapper itself ("") or a name it does not give
        index = int(head)
        if index == len(root) - 1:  # the model, or the wrapper within
            steps, root, path = steps + index, root.model, rest
            continue
        step = f"(input step {steps + index + 1})" if numbered else INPUT_STEP
        return f"{step}{dot}{rest}"
    return path


def _input_steps(root: object) -> int:
    """How many input steps the wrappers of ``root`` put in front of the model, in all."""
    steps = 0
    while isinstance(root, WrappedModel):
        steps, root = steps + len(root) - 1, root.model
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
