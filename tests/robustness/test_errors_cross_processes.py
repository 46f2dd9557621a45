"""Every error and warning class of the package survives pickling with its type and message.

Ray and multiprocessing send a worker's exception to the caller by pickling it. An exception
whose ``__init__`` takes other arguments than the message it passes on cannot be rebuilt from
its ``args``: unpickling fails (``concurrent.futures`` then reports a broken process pool and
the real error is lost) or repeats the message inside itself. The classes are found by walking
the package, so a new one without an example here fails the test.
"""

from __future__ import annotations

import importlib
import pickle
import pkgutil
from pathlib import Path

import pytest

import ctc_plugin


def _package_exception_classes() -> set[type[BaseException]]:
    for module in pkgutil.walk_packages(ctc_plugin.__path__, "ctc_plugin."):
        importlib.import_module(module.name)
    found, stack = set(), [BaseException]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if sub.__module__.startswith("ctc_plugin."):
                found.add(sub)
    return found


def _examples() -> dict[str, BaseException]:
    """A realistically built instance of each class, by qualified name."""
    from ctc_plugin.cam.integrative import (
        EmptyMapWarning,
        LayerCalledAgainWarning,
        NoFeatureMapsError,
        UnknownBlocksError,
        ZeroMapWarning,
    )
    from ctc_plugin.cam.layers import BatchNormBiasError
    from ctc_plugin.cam.transformers import NoSpatialMapError
    from ctc_plugin.cli import UsageError
    from ctc_plugin.commands import CLIError
    from ctc_plugin.commands.methods import MethodError
    from ctc_plugin.ctc.errors import (
        CompositeOutsideAttributorError,
        GraphCutError,
        UnsupportedOperationError,
        UntracedOutputError,
    )
    from ctc_plugin.ctc.rules import BatchDimensionError
    from ctc_plugin.explainer.attribution import ClassifierMismatchWarning
    from ctc_plugin.explainer.checkpoints import ResumeMismatchError
    from ctc_plugin.features.base import ValueRangeError, ValueRangeWarning
    from ctc_plugin.features.cache import CorruptCacheEntryWarning, MaskCacheError
    from ctc_plugin.inputs import DtypeMismatchError, TrainingModeError
    from ctc_plugin.resumable.atomic import ConfigMismatchError
    from ctc_plugin.resumable.cluster import RayConnectionError, RayError, RayUnavailableError
    from ctc_plugin.resumable.job import ShardInputError
    from ctc_plugin.runs.runner import UnreadableImageError
    from ctc_plugin.runs.sources import SourceError

    examples = [
        UnsupportedOperationError("torch.sort", "it reorders the units", "body.0 (Sorts)"),
        UnsupportedOperationError("torch.softmax", "the output is a gate", at_output=True),
        UntracedOutputError("the output was rebuilt from numpy", "head (Linear)"),
        CompositeOutsideAttributorError("Conv2d"),
        GraphCutError("Tensor.detach"),
        ConfigMismatchError(Path("out/run"), [("segments", 25, 50)], kind="benchmark run"),
        UsageError("ctc-plugin explain", "argument --top: expected a positive integer"),
        CLIError("--model: no such file"),
        MethodError("lime failed: out of memory"),
        BatchDimensionError("the batch dimension is not first"),
        UnknownBlocksError("no transformer blocks found"),
        NoFeatureMapsError("no convolution ran in the model"),
        NoSpatialMapError("the model has no submodule returning a spatial (N, C, H, W) map"),
        ValueRangeError("the images lie in [-2, 2], outside [0, 1]"),
        _with_differences(
            ResumeMismatchError("checkpoint 'a.ckpt' was trained with other settings"),
            (("patience", 2, 3),),
        ),
        ValueRangeWarning("the images lie in [0, 1], 0.39% of value_range=(0, 255)"),
        MaskCacheError("the cache folder is not writable"),
        TrainingModeError("call model.eval() first"),
        BatchNormBiasError("BatchNorm 'bn' ...; pass bias=False", reason="BatchNorm 'bn' ..."),
        DtypeMismatchError("the inputs are torch.float64 and the model computes in float32"),
        RayError("ray failed"),
        RayUnavailableError("install ray"),
        RayConnectionError("no Ray cluster at ray://head:10001"),
        SourceError("no images in photos/"),
        ShardInputError("cannot read the table of piece 3"),
        _with_item(UnreadableImageError("cannot read cat/1.png as an image"), "cat/1.png"),
        LayerCalledAgainWarning("layer1.0.relu ran twice"),
        EmptyMapWarning("the map of example 1 peaks at 1e-08, not 1"),
        ZeroMapWarning("the map of example 1 is zero everywhere"),
        ClassifierMismatchWarning("the explainer was trained against other weights"),
        CorruptCacheEntryWarning("mask cache entry ab12 is damaged"),
    ]
    private = {"_CorruptEntry", "_BackwardDone", "_Refused"}  # control flow inside one call
    by_name = {f"{type(e).__module__}.{type(e).__qualname__}": e for e in examples}
    for cls in _package_exception_classes():
        if cls.__qualname__ in private:
            by_name[f"{cls.__module__}.{cls.__qualname__}"] = cls("internal")
    return by_name


def _with_differences(error: BaseException, differences: tuple) -> BaseException:
    """``error`` with the ``differences`` a refused resume sets after building it."""
    error.differences = differences
    return error


def _with_item(error: BaseException, item: str) -> BaseException:
    """``error`` with the ``item`` a shard's runner sets after building it."""
    error.item = item
    return error


def test_every_class_of_the_package_has_an_example():
    listed = set(_examples())
    found = {f"{c.__module__}.{c.__qualname__}" for c in _package_exception_classes()}
    assert found - listed == set(), "add an example of the new error class here"
    assert listed - found == set()


@pytest.mark.parametrize("name", sorted(_examples()))
def test_an_error_comes_back_from_pickling_as_it_was(name):
    error = _examples()[name]
    error.__notes__ = ["while explaining shard 3"]  # set after construction (add_note)
    again = pickle.loads(pickle.dumps(error))
    assert again.__notes__ == ["while explaining shard 3"]
    assert type(again) is type(error)
    assert str(again) == str(error)
    assert vars(again) == vars(error)  # its attributes (operation, module, prog, ...)
