"""The checks every attribution method runs on its inputs and model, with one message per mistake.

[`CTC`][ctc_plugin.CTC], [`CTCAttributor`][ctc_plugin.CTCAttributor],
[`IntegrativeCAM`][ctc_plugin.IntegrativeCAM],
[`ExplainerAttribution`][ctc_plugin.ExplainerAttribution] and the segmenters of
`ctc_plugin.features` call these functions before they run the model, so the same bad input gets the
same error everywhere, and a refused call changes nothing:

- not a tensor (a NumPy array, a PIL image, a list): ``TypeError`` saying how to convert it,
  e.g. ``torch.from_numpy(x).permute(0, 3, 1, 2)``;
- an empty tuple of inputs: ``ValueError``;
- a dtype that is not floating point (``uint8``, ``long``, ``bool``, complex): ``ValueError``
  (``x.float() / 255`` for 8-bit images);
- a scalar, or, for a method that takes images, one image ``(C, H, W)`` or ``(H, W)``:
  ``ValueError`` saying which dimension to add (``x.unsqueeze(0)``);
- a batch of size 0, or tuple members with different batch sizes: ``ValueError``;
- NaN or infinite values: ``ValueError`` with how many and in which examples;
- BatchNorm, dropout or tracked InstanceNorm in training mode:
  [`TrainingModeError`][ctc_plugin.TrainingModeError] naming the module (``model.eval()``).

Targets are checked by [`ctc_plugin.targets`][ctc_plugin.targets].
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
import numbers
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch.nn import functional
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.nn.parameter import is_lazy
from torch.nn.utils.parametrizations import _SpectralNorm
from torch.nn.utils.spectral_norm import SpectralNorm as SpectralNormHook

from ctc_plugin.batchnorm import BATCH_NORM_TYPES, keeps_no_running_statistics
from ctc_plugin.concurrency import model_of
from ctc_plugin.module_paths import module_path, path_as_given

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "DtypeMismatchError",
    "TrainingModeError",
    "broadcasts_to",
    "changes_in_training",
    "check_eval_mode",
    "check_float_model",
    "check_has_values",
    "check_nothing_shared",
    "check_images",
    "check_inputs",
    "check_model_has_values",
    "check_not_exported",
    "check_python_model",
    "check_takes_images",
    "device_of",
    "dtype_mismatch_explained",
    "dtype_mismatch_named",
    "example_rows",
    "exported_graph",
    "holds_per_example",
    "floating_dtype",
    "forward_dtype",
    "FUNCTIONAL_DROPOUTS",
    "is_dtype_error",
    "is_finite_number",
    "is_integer",
    "is_per_example",
    "is_quantized",
    "map_per_example",
    "observes",
    "PATCH_SEQUENCE_MODELS",
    "RANDOM_FUNCTIONS",
    "outside_inference_mode",
    "quantized_module_error",
    "with_gradients",
    "training_mode_error",
    "training_modules_refused",
]

#: The channel counts that make a trailing dimension look like channels (channels-last layout).
CHANNEL_COUNTS = (1, 3, 4)


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (Python's or NumPy's) and not a bool.

    ``True`` is an ``int`` in Python; as a count, size or seed it is a mistake, not 1.
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to exactly ``target`` (by torch's rules)."""
    try:
        return torch.broadcast_shapes(tuple(shape), tuple(target)) == tuple(target)
    except RuntimeError:
        return False


def is_finite_number(value: object) -> bool:
    """Whether ``value`` is a finite real number (Python's or NumPy's) and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_per_example(value: Any, n: int) -> bool:
    """Whether ``value`` holds one row per example of ``n``: a tensor whose first dimension is n.

    How the methods read an extra argument of the model (``additional_forward_args``), as
    Captum does: such a tensor belongs to the examples, anything else to every example.
    """
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n


def map_per_example(value: Any, n: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``fn`` applied to every per-example tensor in it (`is_per_example`).

    Tensors are found at any depth of tuples (named ones too), lists and dicts, so a model that
    takes its per-example extras as a dict or a list gets them treated as a bare tensor would
    be. Only a container that holds such a tensor is rebuilt, with its own type; any other
    value, a container without one included, is passed on as the same object (a dict the model
    writes into stays the caller's).

    Raises:
        TypeError: For a container that holds a per-example tensor but cannot be rebuilt (a
            tuple subclass with a constructor of its own): pass the tensor at the top level.
    """
    return _map_per_example(value, n, fn, set())


def _map_per_example(
    value: Any, n: int, fn: Callable[[torch.Tensor], torch.Tensor], open_: set[int]
) -> Any:
    if is_per_example(value, n):
        return fn(value)
    if not isinstance(value, (dict, list, tuple)) or id(value) in open_:  # a cycle: as it is
        return value
    open_.add(id(value))
    try:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        mapped = {key: _map_per_example(item, n, fn, open_) for key, item in items}
    finally:
        open_.discard(id(value))
    original = value.items() if isinstance(value, dict) else enumerate(value)
    if all(mapped[key] is item for key, item in original):
        return value
    try:
        if isinstance(value, dict):
            rebuilt = copy.copy(value)  # keeps a dict subclass (OrderedDict, defaultdict)
            rebuilt.update(mapped)
            return rebuilt
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
            return type(value)(*mapped.values())
        return type(value)(mapped.values())
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"additional_forward_args holds a {type(value).__name__} with tensors of one row "
            f"per example, which are repeated for every copy, and it cannot be rebuilt with "
            f"them ({error}); pass those tensors as arguments of their own"
        ) from error


def holds_per_example(value: Any, n: int) -> bool:
    """Whether ``value`` is or contains a per-example tensor (where `map_per_example` looks)."""
    found: list[torch.Tensor] = []
    _map_per_example(value, n, lambda tensor: found.append(tensor) or tensor, set())
    return bool(found)


def example_rows(value: Any, n: int, part: slice) -> Any:
    """Examples ``part`` of the per-example tensors in ``value`` (`map_per_example`)."""
    return map_per_example(value, n, lambda tensor: tensor[part])


def device_of(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer), where its inputs must be.

    A model without parameters or buffers runs on the CPU.
    """
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def floating_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype ``model`` computes in: its first floating-point parameter's (else buffer's).

    ``None`` for a model without floating-point tensors (it takes whatever it is given).
    """
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def forward_dtype(forward_func: Any) -> torch.dtype | None:
    """The dtype the model behind ``forward_func`` computes in (`floating_dtype`), if known.

    ``None`` where no model can be found behind it (`model_of`) or the model holds no
    floating-point tensor.
    """
    model = model_of(forward_func)
    return floating_dtype(model) if model is not None else None


class TrainingModeError(ValueError):
    """The model has a module in training mode whose forward pass would change it or the result.

    BatchNorm (and InstanceNorm with running statistics) in training mode update their running
    statistics on every forward pass and normalise with the batch's own statistics; dropout
    drops units at random. An attribution method refuses such a model before running it, so the
    model is left exactly as it was. Call ``model.eval()`` first.
    """


def check_inputs(
    inputs: Any,
    *,
    name: str = "inputs",
    images: bool = False,
    channels: int | None = None,
    tuples: bool = True,
    floating: bool = True,
    finite: bool = True,
    context: str = "",
) -> tuple[torch.Tensor, ...]:
    """Check the inputs of an attribution method; return them as a tuple of tensors.

    Checks, in this order, each with its own message: that ``inputs`` is a tensor (or, with
    ``tuples``, a non-empty tuple of tensors); that each is floating point; that each has a batch
    dimension; with ``images``, that the first is an image batch ``(N, C, H, W)`` (with
    ``channels`` channels, when given); that the batch is not empty and every tensor of a tuple
    has the same batch size; that each example holds values (an image at least one pixel); and
    that no value is NaN or infinite.

    Args:
        inputs: What the user passed.
        name: The argument's name in the messages (``inputs``, ``input``, ``images``).
        images: Require the first tensor to be an image batch ``(N, C, H, W)``.
        channels: With ``images``, the number of channels required.
        tuples: Accept a tuple of tensors (Captum's convention); otherwise one tensor only.
        floating: Require a floating-point dtype.
        finite: Refuse NaN and infinite values.
        context: Appended to the image-shape message (what the method needs images for).

    Returns:
        The inputs as a tuple of tensors (a 1-tuple for a single tensor). An inference tensor
        (made under ``torch.inference_mode()``) comes back as an ordinary copy, which autograd
        and in-place writes accept, when this runs with inference mode off (the methods run
        under [`outside_inference_mode`][ctc_plugin.inputs.outside_inference_mode]).

    Raises:
        TypeError: Not a tensor (nor, with ``tuples``, a tuple); the message says how to convert.
        ValueError: An empty tuple, a tensor on the meta device (no values), a dtype that is not
            floating point, no batch dimension, not an image batch, an empty batch, batch sizes
            that differ, examples without values (a dimension of size 0: images of height or
            width 0), NaN or infinite values.
    """
    is_tuple = isinstance(inputs, tuple)
    if is_tuple and not tuples:
        raise TypeError(
            f"{name} must be one torch.Tensor, got a tuple of {len(inputs)}; this method takes "
            "a single input tensor"
        )
    members: tuple[Any, ...] = inputs if is_tuple else (inputs,)
    if not members:
        raise ValueError(f"{name} is an empty tuple; give at least one tensor")
    names = [f"{name}[{i}]" if is_tuple else name for i in range(len(members))]
    for label, x in zip(names, members):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{label} must be a torch.Tensor, got {_describe_object(x)}")
        check_has_values(x, label)
    for label, x in zip(names, members):
        if floating and not x.is_floating_point():
            raise ValueError(
                f"{label} must be a floating-point tensor, got dtype {x.dtype}; "
                f"{_dtype_hint(x.dtype)}"
            )
        if x.dim() == 0:
            raise ValueError(
                f"{label} is a scalar (a 0-d tensor) but needs a batch dimension first, shape "
                f"(N, ...); add it with x.reshape(1, -1) or x.unsqueeze(0)"
            )
    if images:
        first = members[0]
        batch_of_values = (
            len(members) > 1
            and first.dim() < 4
            and any(x.dim() == 4 and x.shape[0] == first.shape[0] for x in members[1:])
        )
        if batch_of_values:  # (N, D) values beside an image batch: an input out of place
            raise ValueError(
                f"{names[0]} must be {_wanted_images(channels)}, got shape {tuple(first.shape)}: "
                "it looks like a batch of other values beside the images; give the images "
                "first, or pass the other values as additional_forward_args"
                f"{context}"
            )
        _check_image_shape(first, names[0], channels, context)
    sizes = [x.shape[0] for x in members]
    if sizes[0] == 0:
        raise ValueError(f"{names[0]} is an empty batch (N = 0); give at least one example")
    for label, size in zip(names[1:], sizes[1:]):
        if size != sizes[0]:
            raise ValueError(
                f"all inputs must share dimension 0 (the batch): {names[0]} has {sizes[0]} "
                f"examples but {label} has {size}"
            )
    for index, (label, x) in enumerate(zip(names, members)):
        if x.numel() == 0:  # the batch is not empty: each example is
            raise _no_values_error(x, label, images and index == 0)
    if finite:
        for label, x in zip(names, members):
            _check_finite(x, label)
    return tuple(x.clone() if x.is_inference() else x for x in members)


def _no_values_error(x: torch.Tensor, name: str, image: bool) -> ValueError:
    """The refusal of a non-empty batch whose examples hold no value (an image of 0 pixels)."""
    shape = tuple(x.shape)
    if image:
        _, channels, height, width = shape
        what = (
            f"has no pixels (height {height}, width {width})"
            if height == 0 or width == 0
            else f"has no channels (C = {channels})"
        )
        return ValueError(
            f"{name} {what}, shape {shape}: every image needs at least one pixel in each of its "
            "channels; check the crop or resize that made the images"
        )
    return ValueError(
        f"{name} has no values, shape {shape}: every example needs at least one value (a "
        "dimension of size 0 leaves none); check how the inputs were made"
    )


def check_has_values(tensor: torch.Tensor, name: str) -> None:
    """Refuse a tensor on the ``meta`` device, which has a shape and a dtype but no values.

    Raises:
        ValueError: Naming ``name`` and what to give instead.
    """
    if tensor.is_meta:
        raise ValueError(
            f"{name} is on the meta device: it has a shape but no values (made with "
            "device='meta', or by a model built or loaded there); give a tensor with values "
            "on the model's device"
        )


def outside_inference_mode(method: F) -> F:
    """Decorate an attribution method to run with ``torch.inference_mode`` off.

    Inside ``torch.inference_mode()`` every new tensor is an inference tensor, which has no
    version counter and cannot enter autograd: the gradients of Integrative CAM and of CTC's
    ``"none"`` shortcut, and the memory reuse of CTC's pass, would fail. Turning the mode off
    for the call (with its inputs copied by `check_inputs`) lets a method run in code that
    serves a model under inference mode; its results are ordinary tensors.
    """

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(False):
            return method(*args, **kwargs)

    return run  # type: ignore[return-value]


def with_gradients(function: F) -> F:
    """Decorate a training function to run with inference mode off and gradients on.

    Called inside ``torch.no_grad()`` or ``torch.inference_mode()`` (a notebook cell left in
    such a block, serving code), training would fail in ``backward`` with autograd's "element
    0 of tensors does not require grad"; as Lightning's training loop does, the call turns
    both on for itself. Its inputs are copied where they are inference tensors
    (`check_inputs`); a network whose own weights are inference tensors is refused by
    `check_gradient_weights`.
    """

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(False), torch.enable_grad():
            return function(*args, **kwargs)

    return run  # type: ignore[return-value]


class DtypeMismatchError(RuntimeError):
    """The inputs are of another floating-point dtype than the model computes in.

    Raised in place of torch's own error (``expected scalar type Double but found Float``), which
    names neither the inputs nor the model; a ``RuntimeError`` as torch's is.
    """


def dtype_mismatch_explained(method: F) -> F:
    """Decorate an ``attribute`` method: torch's dtype errors say which dtypes meet and what to do.

    A model may take inputs of another dtype than its parameters (a normalisation with float32
    buffers in front turns float16 images into float32), so the dtypes are not compared before
    the call. When the call fails with a ``RuntimeError`` that names a type, while the inputs'
    floating-point dtype differs from the model's
    ([`floating_dtype`][ctc_plugin.inputs.floating_dtype]), a
    [`DtypeMismatchError`][ctc_plugin.inputs.DtypeMismatchError] says so; any other error
    passes unchanged.
    """

    @functools.wraps(method)
    def run(self: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        with dtype_mismatch_named(self.forward_func, inputs):
            return method(self, inputs, *args, **kwargs)

    return run  # type: ignore[return-value]


@contextlib.contextmanager
def dtype_mismatch_named(forward_func: Any, inputs: Any) -> Iterator[None]:
    """Within the block, torch's dtype errors of ``forward_func`` on ``inputs`` say what to do.

    As [`dtype_mismatch_explained`][ctc_plugin.inputs.dtype_mismatch_explained], for code that
    is no ``attribute`` method (the evaluation's metrics): a ``RuntimeError`` that names a type,
    while the inputs' floating-point dtype differs from the model's, becomes a
    [`DtypeMismatchError`][ctc_plugin.inputs.DtypeMismatchError]; any other error passes
    unchanged.

    Raises:
        DtypeMismatchError: Naming both dtypes and the conversion to make.
    """
    try:
        yield
    except DtypeMismatchError:
        raise
    except RuntimeError as error:
        mismatch = _dtype_mismatch(error, forward_func, inputs)
        if mismatch is None:
            raise
        raise mismatch from error


#: This package's name: its own errors are never taken for torch's dtype errors.
_PACKAGE = __name__.partition(".")[0]

#: Torch's messages for operands of two dtypes (convolutions, matrix products, normalisations).
_TORCH_DTYPE_ERROR = re.compile(
    r"scalar type|(input|weight|bias) type \(|same dtype|mixed dtype|same datatype|"
    r"dtype.*but (got|found)|dtypes? (must be the same|match)|\.dtype to be equal|"
    r"out type to be",
    re.IGNORECASE,
)


def is_dtype_error(error: BaseException) -> bool:
    """Whether ``error`` is torch's error for operands of two dtypes (its first line says so).

    ``expected scalar type Double but found Float``, ``Input type (double) and bias type
    (float) should be the same``, ...; never an error of this package's own.
    """
    text = str(error).strip()
    first_line = text.splitlines()[0] if text else ""
    return (
        isinstance(error, RuntimeError)
        and type(error).__module__.partition(".")[0] != _PACKAGE  # its own, meant as they are
        and bool(_TORCH_DTYPE_ERROR.search(first_line))
    )


def _dtype_mismatch(
    error: RuntimeError, forward_func: Any, inputs: Any
) -> DtypeMismatchError | None:
    """The `DtypeMismatchError` that explains ``error``, or ``None`` if the dtypes agree."""
    wanted = forward_dtype(forward_func)
    members = inputs if isinstance(inputs, tuple) else (inputs,)
    given = sorted(
        {str(x.dtype) for x in members if isinstance(x, torch.Tensor) and x.is_floating_point()}
    )
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if wanted is None or not given or given == [str(wanted)] or not is_dtype_error(error):
        return None
    return DtypeMismatchError(
        f"the inputs are {' and '.join(given)} and the model computes in {wanted} (torch: "
        f"{first_line}); convert the inputs with x.to({wanted}), or the model with "
        f"model.to({given[0]})"
    )


def check_images(
    images: Any,
    *,
    name: str = "images",
    channels: int | None = None,
    floating: bool = True,
    finite: bool = True,
) -> torch.Tensor:
    """Check one image batch ``(N, C, H, W)``, as `check_inputs` does; return it.

    Args:
        images: What the user passed.
        name: The argument's name in the messages.
        channels: The number of channels required, if any.
        floating: Require a floating-point dtype.
        finite: Refuse NaN and infinite values.

    Raises:
        TypeError: Not a tensor.
        ValueError: As [`check_inputs`][ctc_plugin.inputs.check_inputs] with ``images=True``.
    """
    (checked,) = check_inputs(
        images,
        name=name,
        images=True,
        channels=channels,
        tuples=False,
        floating=floating,
        finite=finite,
    )
    return checked


def check_eval_mode(forward_func: Callable[..., Any]) -> None:
    """Refuse a model with a module that `changes_in_training`, in training mode.

    BatchNorm, dropout, stochastic depth, tracked InstanceNorm and the others
    [`changes_in_training`][ctc_plugin.inputs.changes_in_training] names.

    Their forward pass in training mode updates running statistics (the model changes) or is
    random, so an explanation would change the model or not be reproducible. ``forward_func``
    may be an ``nn.Module`` or one of its bound methods (``model.forward``); any other function
    is not inspected.

    Raises:
        TrainingModeError: Naming the first such module; nothing has run yet.
    """
    model = model_of(forward_func)  # the model, or the owner of a bound method (model.forward)
    if model is None:
        return
    idle = _observers_of_fake_quantizers(model)  # run only where their fake quantizer observes
    for module in model.modules():  # names only for a refusal
        if id(module) not in idle and changes_in_training(module):
            name = module_path(model, module)  # the user's path, behind a normalisation too
            raise training_mode_error(module, repr(name or "(the model)"))


def check_model_has_values(forward_func: Callable[..., Any]) -> None:
    """Refuse a model whose parameters or buffers hold no values yet.

    A lazy module that never ran (``nn.LazyConv2d``, ``nn.LazyLinear``) makes its weights at
    random on its first call, which the explanation would then explain (and the model would
    change); a tensor on the ``meta`` device has a shape but no values (a model built under
    ``torch.device("meta")`` whose weights were never loaded), and torch failed on it with a
    bare device error. ``forward_func`` is inspected as in
    [`check_eval_mode`][ctc_plugin.inputs.check_eval_mode].

    Raises:
        ValueError: Naming the first such tensor and how to give it values; nothing has run yet.
    """
    model = model_of(forward_func)
    if model is None:
        return
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if is_lazy(tensor):
            raise ValueError(
                f"the model's {path_as_given(model, name)!r} is not made yet (a lazy module, "
                "nn.LazyConv2d or nn.LazyLinear, that never ran): its first call would make "
                "its weights at random, and they would be explained; run the model once on a "
                "batch of your images (model(images)), or load its weights, first"
            )
        if tensor.is_meta:
            raise ValueError(
                f"the model's {path_as_given(model, name)!r} is on the meta device: it has a "
                "shape but no values (a model built under torch.device('meta') whose weights "
                "were not loaded); load them first: model.load_state_dict(state, assign=True), "
                "or model.to_empty(device='cpu') and then model.load_state_dict(state)"
            )


def check_float_model(forward_func: Callable[..., Any], method: str) -> None:
    """Refuse a quantized model, for a method that follows the model's float operations.

    ``forward_func`` is inspected as in [`check_eval_mode`][ctc_plugin.inputs.check_eval_mode];
    the modules of a plain function are checked as they run (`quantized_module_error`).

    Raises:
        ValueError: Naming the first quantized module (`is_quantized`); nothing has run yet.
    """
    model = model_of(forward_func)
    if model is None:
        return
    for module in model.modules():
        if is_quantized(module):
            raise quantized_module_error(module, repr(module_path(model, module)), method)


def check_python_model(forward_func: Callable[..., Any], method: str) -> None:
    """Refuse a model whose operations run where ``method`` cannot follow them.

    A TorchScript module or function (``torch.jit.script``, ``torch.jit.trace``) runs outside
    Python; the module of an exported program (``torch.export.export(...).module()``, or a
    ``make_fx`` graph) calls ATen operators (``torch.ops.aten.conv2d.default``), which are no
    layers and no torch functions the methods know, and it keeps the input shapes of the export
    (a fixed batch size fails on the methods' batches with a bare ``Guard failed``).
    ``torch.fx.symbolic_trace``'s graph modules call torch functions and are explained as the
    model. ``forward_func`` is inspected as in
    [`check_eval_mode`][ctc_plugin.inputs.check_eval_mode].

    Raises:
        TypeError: Saying to pass the original ``nn.Module``; nothing has run yet.
    """
    if isinstance(forward_func, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        raise TypeError(
            f"the model given to {method} is a TorchScript {type(forward_func).__name__} "
            "(torch.jit.script or torch.jit.trace): its operations run outside Python, where "
            f"{method} can neither see its stages nor hook its layers; pass the original "
            "nn.Module"
        )
    check_not_exported(forward_func, method)


def check_not_exported(forward_func: Callable[..., Any], method: str) -> None:
    """Refuse the module of an exported program: the second half of `check_python_model`.

    Raises:
        TypeError: Saying to pass the original ``nn.Module``; nothing has run yet.
    """
    graph = exported_graph(forward_func)
    if graph is not None:
        operator = next(node.target for node in graph.graph.nodes if _is_aten_call(node))
        raise TypeError(
            f"the model given to {method} is the module of an exported program "
            f"(torch.export.export(...).module()): it calls ATen operators ({operator}), which "
            f"{method} cannot follow as layers, and keeps the input shapes it was exported "
            "with; pass the original nn.Module (a torch.fx.symbolic_trace GraphModule, which "
            "calls torch functions, is explained as the model)"
        )


def exported_graph(forward_func: Callable[..., Any]) -> torch.fx.GraphModule | None:
    """The first graph module of ``forward_func``'s model that calls ATen operators, or None.

    The module of an exported program (``torch.export.export(...).module()``) or a ``make_fx``
    graph; ``forward_func`` is inspected as in
    [`check_eval_mode`][ctc_plugin.inputs.check_eval_mode].
    """
    model = model_of(forward_func)
    if model is None:
        return None
    return next((m for m in model.modules() if _runs_aten_operators(m)), None)


def _runs_aten_operators(module: torch.nn.Module) -> bool:
    """Whether ``module`` is an FX graph module whose graph calls ATen operators."""
    graph = getattr(module, "graph", None)
    return isinstance(module, torch.fx.GraphModule) and any(map(_is_aten_call, graph.nodes))


def _is_aten_call(node: Any) -> bool:
    """Whether an FX ``node`` calls an ATen operator (``torch.ops.aten.conv2d.default``).

    Only ATen's: the graph of ``convert_fx`` calls quantized operators
    (``torch.ops.quantized.add_relu``) among its quantized modules, refused as quantized.
    """
    return (
        node.op == "call_function"
        and isinstance(node.target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket))
        and str(node.target).startswith("aten.")
    )


def is_quantized(module: torch.nn.Module) -> bool:
    """Whether ``module`` computes on quantized integers, or rounds to them.

    The modules ``torch.ao.quantization.quantize_dynamic`` and ``convert`` put in a model
    (``torch.ao.nn.quantized``: ``DynamicQuantizedLinear``, ``QuantizedConv2d``, ``Quantize``,
    ...), and the fake quantizers of ``prepare_qat`` with fake quantization on: their operations
    take no gradient (or a straight-through one) and are no float operations a method can
    follow. A fused fake quantizer (``FusedMovingAvgObsFakeQuantize``, ``prepare_qat``'s
    default) is one with fake quantization off too: its fused operation still runs, returning a
    copy. ``FloatFunctional`` (the float additions of a model written for quantization,
    torchvision's quantizable ResNet), ``FXFloatFunctional`` (what ``prepare_fx`` swaps them
    for, in the model it is given too) and the float reference modules are not. Read by module
    name, as `observes` reads classes.
    """
    where = type(module).__module__
    kinds = _quantization_classes(module)
    if "FakeQuantizeBase" in kinds:  # a fused one runs its operation whatever its flags say
        return "FusedMovingAvgObsFakeQuantize" in kinds or _flag_on(module, "fake_quant_enabled")
    return (
        where.startswith(("torch.ao.nn.quantized.", "torch.ao.nn.intrinsic.quantized."))
        and ".reference." not in where
        and type(module).__name__ not in ("FloatFunctional", "FXFloatFunctional")
    )


def quantized_module_error(module: torch.nn.Module, name: str, method: str) -> ValueError:
    """The error for a module that `is_quantized`, named ``name``, refused by ``method``."""
    kind = type(module).__name__
    kinds = _quantization_classes(module)
    if "FakeQuantizeBase" not in kinds:
        what = (
            f"a quantized {kind} (torch.ao.nn.quantized, made by "
            "torch.ao.quantization.quantize_dynamic or convert): it computes on integers"
        )
    elif "FusedMovingAvgObsFakeQuantize" in kinds and not _flag_on(module, "fake_quant_enabled"):
        what = (
            f"a fused fake quantizer ({kind}, of torch.ao.quantization.prepare_qat): with fake "
            "quantization off it still runs torch.fused_moving_avg_obs_fake_quant"
        )
    else:
        what = (
            f"a fake quantizer ({kind}, of torch.ao.quantization.prepare_qat): it rounds to "
            "integer steps"
        )
    return ValueError(
        f"{method} follows the model's float operations, and {name} is {what}, with no "
        "gradient and no operation the method can follow; explain the float model it was "
        "made from (quantize a copy to keep it: quantize_dynamic(copy.deepcopy(model), ...), "
        "prepare_qat(copy.deepcopy(model)))"
    )


def check_gradient_weights(forward_func: Callable[..., Any], method: str) -> None:
    """Refuse a model whose weights are inference tensors, for a method that needs gradients.

    A model built or loaded under ``torch.inference_mode()`` (as serving code does) holds
    inference tensors, which autograd cannot save for a backward pass. ``forward_func`` is
    inspected as in [`check_eval_mode`][ctc_plugin.inputs.check_eval_mode].

    Raises:
        ValueError: Naming the first such parameter or buffer and the one line that turns the
            model's weights into ordinary tensors (same values); nothing has run yet.
    """
    model = model_of(forward_func)
    if model is None:
        return
    named = (*model.named_parameters(), *model.named_buffers())
    found = [name for name, tensor in named if tensor.is_inference()]
    if not found:
        return
    saved = set(model.state_dict())
    left_out = [name for name in found if name not in saved]  # non-persistent buffers
    found, left_out = (
        [path_as_given(model, name) for name in names] for names in (found, left_out)
    )
    buffers = (
        f"; then, for the buffers the state dict leaves out ({', '.join(map(repr, left_out))}): "
        "for m in model.modules(): [setattr(m, n, b.clone()) for n, b in "
        "m.named_buffers(recurse=False)]"
        if left_out
        else ""
    )
    raise ValueError(
        f"{method} needs gradients through the model, and its tensors (parameters or buffers) "
        f"are inference tensors (made under torch.inference_mode(): {found[0]!r} is one), "
        "which autograd cannot use; build or load the model outside inference mode "
        "(torch.no_grad() saves the same memory), or make them ordinary tensors once, outside "
        "inference mode: model.load_state_dict({k: v.clone() for k, v in "
        f"model.state_dict().items()}}, assign=True){buffers}"
    )


#: The functional dropouts: the identity in eval mode (``training=False``), random otherwise.
FUNCTIONAL_DROPOUTS = (
    functional.dropout, functional.dropout1d, functional.dropout2d, functional.dropout3d,
    functional.alpha_dropout, functional.feature_alpha_dropout,
)  # fmt: skip


#: Torch functions that draw random numbers: an attribution that runs the model refuses them
#: whatever their arguments (stochastic depth or drop path in training mode multiplies the signal
#: by such numbers), since its result would change from call to call.
RANDOM_FUNCTIONS: frozenset[Any] = frozenset(
    (
        torch.rand, torch.rand_like, torch.randn, torch.randn_like, torch.randint,
        torch.randint_like, torch.randperm, torch.bernoulli, torch.Tensor.bernoulli,
        torch.Tensor.bernoulli_, torch.Tensor.uniform_, torch.Tensor.normal_, torch.normal,
        torch.multinomial, torch.Tensor.random_, torch.Tensor.exponential_, torch.poisson,
    )
)  # fmt: skip


#: Hugging Face ``transformers``' ``config.model_type`` of the image models that take their
#: images as sequences of patches (SigLIP 2's "NaFlex" input: ``pixel_values`` (N, patches,
#: p * p * C) with ``spatial_shapes``), not as (N, C, H, W) images.
PATCH_SEQUENCE_MODELS = frozenset({"siglip2"})


def check_takes_images(forward_func: Callable[..., Any]) -> None:
    """Refuse a model that takes its images as sequences of patches, given without its wrapper.

    Such a model (SigLIP 2) would fail on (N, C, H, W) images deep inside with a torch error;
    [`HuggingFaceClassifier`][ctc_plugin.adapters.huggingface.HuggingFaceClassifier] cuts the
    images as its image processor does. ``forward_func`` may be the model or one of its bound
    methods; any other function is not inspected.

    Raises:
        ValueError: Saying to wrap the model; nothing has run yet.
    """
    model = model_of(forward_func)
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind in PATCH_SEQUENCE_MODELS:
        raise ValueError(
            f"{type(model).__name__} takes its images cut into a sequence of patches (its image "
            "processor's pixel_values with spatial_shapes), not (N, C, H, W) images; wrap it: "
            "ctc_plugin.adapters.huggingface.HuggingFaceClassifier(model), which cuts them as "
            "the processor does"
        )


def changes_in_training(module: torch.nn.Module) -> bool:
    """Whether ``module`` runs in training mode and would then change itself or be random.

    BatchNorm (with running statistics: one without computes the same in either mode),
    dropout (``p > 0``; ``p = 0`` is the identity), ``RReLU`` (random slopes), stochastic
    depth (torchvision's ``StochasticDepth``, timm's and Hugging Face's ``DropPath`` classes,
    with a nonzero rate),
    InstanceNorm with running statistics, recurrent layers (LSTM, GRU, RNN) with dropout between
    their layers, and spectral normalisation (its power iteration updates its vectors:
    ``parametrizations.spectral_norm`` or the older hook form). Also, in either mode, a
    quantization observer that records what it sees (`observes`): it changes itself in eval
    mode too.
    """
    # first: a model in eval mode is the common case
    return (module.training and _changes_when_training(module)) or observes(module)


def observes(module: torch.nn.Module) -> bool:
    """Whether running ``module`` records the statistics of what it sees, in either mode.

    The observers of a model prepared for quantization (``torch.ao.quantization.prepare`` or
    ``prepare_qat``: ``MinMaxObserver``, ``HistogramObserver``, ...; those without state, such
    as ``PlaceholderObserver``, record nothing) and fake quantizers whose observer is enabled
    (``FakeQuantize``, ``FusedMovingAvgObsFakeQuantize``; ``disable_observer`` turns it off).
    Read by class name: importing ``torch.ao.quantization`` here would slow down importing the
    package.
    """
    kinds = _quantization_classes(module)
    if "FakeQuantizeBase" in kinds:
        return _flag_on(module, "observer_enabled")
    return "ObserverBase" in kinds and next(module.buffers(recurse=False), None) is not None


def _quantization_classes(module: torch.nn.Module) -> frozenset[str]:
    """The names of ``torch.ao.quantization``'s own classes among those of ``module``."""
    return _quantization_classes_of(type(module))


@functools.lru_cache(maxsize=1024)  # bounded: FX makes a class for every GraphModule
def _quantization_classes_of(kind: type) -> frozenset[str]:
    """`_quantization_classes` of a module class (read once per class: checks run per call)."""
    return frozenset(
        base.__name__
        for base in kind.__mro__
        if base.__module__.startswith("torch.ao.quantization.")
    )


def _flag_on(module: torch.nn.Module, flag: str) -> bool:
    """Whether a fake quantizer's ``flag`` buffer (``observer_enabled``, ...) is on (or unread)."""
    value = getattr(module, flag, None)
    return not isinstance(value, torch.Tensor) or value.is_meta or bool(value.flatten()[0])


def _observers_of_fake_quantizers(model: torch.nn.Module) -> set[int]:
    """The ``id`` of each observer held by a fake quantizer of ``model``.

    Such an observer runs only when its fake quantizer's own flag (`observes`) is on, and is
    judged by that flag.
    """
    return {
        id(child)
        for module in model.modules()
        if "FakeQuantizeBase" in _quantization_classes(module)
        for child in module.children()
    }


def _changes_when_training(module: torch.nn.Module) -> bool:
    """Whether ``module`` would change itself or be random in training mode (whatever it is in)."""
    return (
        (isinstance(module, BATCH_NORM_TYPES) and not _batch_statistics_only(module))
        or isinstance(module, (_SpectralNorm, torch.nn.RReLU))  # RReLU: random slopes
        or (isinstance(module, _DropoutNd) and module.p > 0)  # p = 0: the identity
        or _drops_paths(module)
        or (isinstance(module, _InstanceNorm) and module.track_running_stats)
        or (isinstance(module, torch.nn.RNNBase) and module.dropout > 0 and module.num_layers > 1)
        or any(isinstance(hook, SpectralNormHook) for hook in module._forward_pre_hooks.values())
    )


def _batch_statistics_only(module: torch.nn.Module) -> bool:
    """Whether a BatchNorm has no running statistics: it computes the same in either mode.

    Without them (``track_running_stats=False``) it normalises every batch by that batch's own
    statistics in eval mode too, and has nothing to update in training mode: ``model.eval()``
    changes nothing, so its training mode is not refused (each method says what it makes of
    batch statistics). ``SyncBatchNorm`` is not spared: in training mode it gathers the
    statistics of every process.
    """
    return keeps_no_running_statistics(module) and not isinstance(module, torch.nn.SyncBatchNorm)


def _drops_paths(module: torch.nn.Module) -> bool:
    """Whether ``module`` is stochastic depth with a nonzero rate (random in training mode).

    torchvision's ``StochasticDepth`` (``p``, subclasses too), and the ``DropPath`` classes of
    timm and of Hugging Face's models (``ConvNextDropPath``, ``SwinDropPath``, ...:
    ``drop_prob``), read by name: timm and transformers are no dependencies, and importing
    torchvision's ops here would slow down importing the package.
    """
    if any(
        kind.__name__ == "StochasticDepth" and kind.__module__.startswith("torchvision.")
        for kind in type(module).__mro__
    ):
        rate = getattr(module, "p", None)
    elif type(module).__name__.endswith("DropPath"):
        rate = getattr(module, "drop_prob", None)
    else:
        return False
    return isinstance(rate, numbers.Real) and rate > 0


@contextlib.contextmanager
def training_modules_refused(name: str = "(a module of the forward function)") -> Iterator[None]:
    """Refuse, in the calling thread, any module about to run in training mode.

    For forward functions whose modules cannot be inspected beforehand (a lambda, a
    ``functools.partial``): a global forward pre-hook raises before the module's forward runs,
    so BatchNorm's statistics and batch counter stay untouched. Other threads' passes are let be.

    Raises:
        TrainingModeError: Naming the module's type (as ``name``).
    """
    thread = threading.get_ident()

    def check(module: torch.nn.Module, _args: Any) -> None:
        if threading.get_ident() == thread and changes_in_training(module):
            raise training_mode_error(module, name)

    handle = register_module_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()


def check_nothing_shared(
    trained: torch.nn.Module,
    kept: torch.nn.Module,
    trained_name: str,
    kept_name: str,
    copies: str = "",
) -> None:
    """Refuse a model about to be trained that holds parts of a model that must stay as it is.

    A shared parameter would be trained for both (or, frozen for the kept model, stay untrained
    in the other); a shared module that changes in training mode (a BatchNorm, dropout: see
    `changes_in_training`) would run in training mode with the trained model and change the kept
    one's statistics. A shared buffer of another module (a constant, tied) is let be: training
    does not change it. The modules are read, never switched.

    Args:
        trained: The model to be trained (an explainer, a student).
        kept: The model that must not change (the explained classifier, a teacher).
        trained_name: ``trained`` in the message (``"the explainer"``).
        kept_name: ``kept`` in the message (``"the classifier"``).
        copies: What else makes a copy, added to the message's advice.

    Raises:
        ValueError: Naming the first shared part in both models and saying to build from a copy.
    """
    theirs = {
        id(m): (name, "a module") for name, m in kept.named_modules() if _changes_when_training(m)
    }
    theirs |= {id(p): (name, "a parameter") for name, p in kept.named_parameters()}
    shared = next(
        (
            (mine, *theirs[id(part)])
            for mine, part in itertools.chain(trained.named_modules(), trained.named_parameters())
            if id(part) in theirs
        ),
        None,
    )
    if shared is None:
        return
    mine, their, what = shared
    whose = f"{kept_name}'s {their}" if their else f"{kept_name} itself"
    harm = (
        "run it in training mode (its running statistics would change)"
        if what == "a module"
        else f"change that weight of {kept_name} (or, frozen there, leave it untrained)"
    )
    raise ValueError(
        f"{trained_name} shares {what} with {kept_name} (its {mine or 'whole self'} is "
        f"{whose}): training {trained_name} would {harm}; build it from a copy "
        f"(copy.deepcopy(...) of {kept_name}'s part{'; ' + copies if copies else ''})"
    )


def training_mode_error(module: torch.nn.Module, name: str) -> TrainingModeError:
    """The error for a module that `changes_in_training`, named ``name``."""
    if observes(module):
        fake = hasattr(module, "observer_enabled")  # a fake quantizer's flag (prepare_qat)
        way_out = (
            "turn the observers off first, model.apply(torch.ao.quantization.disable_observer) "
            "(they keep the ranges recorded so far)"
            if fake
            else "convert the calibrated model first (torch.ao.quantization.convert)"
        )
        return TrainingModeError(
            f"{type(module).__name__} {name} is a quantization observer that records the range "
            "of every batch it sees, in eval mode too (a model prepared for quantization with "
            f"torch.ao.quantization.{'prepare_qat' if fake else 'prepare'}): running it would "
            f"change the model; {way_out}, or explain the float model before prepare"
        )
    return TrainingModeError(
        f"{type(module).__name__} {name} is in training mode: running it would update its "
        "statistics (running statistics, spectral normalisation's vectors) or drop units at "
        "random, changing the model or the result; call model.eval() first"
    )


# ---------------------------------------------------------------------------- helpers
def _wanted_images(channels: int | None) -> str:
    """What an image batch is, in the messages: ``a batch of images (N, C, H, W)``."""
    return f"a batch of images (N, {'C' if channels is None else channels}, H, W)"


def _check_image_shape(x: torch.Tensor, name: str, channels: int | None, context: str) -> None:
    """Refuse anything but ``(N, C, H, W)`` (with ``channels`` channels), with the fix."""
    wanted = _wanted_images(channels)
    shape = tuple(x.shape)
    hint = ""
    if x.dim() == 4 and (channels is None or shape[1] == channels):
        return
    last = x.dim() == 4 and channels == 3 and shape[1] > 4  # (N, H, W, C) of other channels
    if x.dim() == 4 and shape[-1] == channels:
        hint = "; it looks channels-last: x.permute(0, 3, 1, 2)"
    elif last and shape[-1] == 1:
        hint = "; it looks like channels-last gray: x.permute(0, 3, 1, 2).expand(-1, 3, -1, -1)"
    elif last and shape[-1] == 4:
        hint = "; it looks like channels-last RGBA: x.permute(0, 3, 1, 2)[:, :3]"
    elif x.dim() == 4 and channels == 3 and shape[1] == 1:
        hint = "; for grayscale images, repeat their channel: x.expand(-1, 3, -1, -1)"
    elif x.dim() == 4 and channels == 3 and shape[1] == 4:
        hint = "; for RGBA images, drop the alpha channel: x[:, :3]"
    elif x.dim() == 3 and (shape[0] == channels or shape[0] in CHANNEL_COUNTS):
        hint = "; add the batch dimension: x.unsqueeze(0)"
    elif x.dim() == 3 and channels in (None, 1):
        hint = (
            "; add the batch dimension: x.unsqueeze(0) for one image (C, H, W), or the "
            "channel dimension: x.unsqueeze(1) for a batch of one-channel images (N, H, W)"
        )
    elif x.dim() == 3 and shape[-1] == channels:
        hint = "; it looks like one channels-last image: x.permute(2, 0, 1).unsqueeze(0)"
    elif x.dim() == 3:  # also CTC's copies of one unbatched image, stacked along dim 0
        hint = "; if the input is one image (C, H, W), add the batch dimension: x.unsqueeze(0)"
    elif x.dim() == 2 and channels in (None, 1):
        hint = "; if it is one image (H, W), add the batch and channel dimensions: x[None, None]"
    raise ValueError(f"{name} must be {wanted}, got shape {shape}{hint}{context}")


def _check_finite(x: torch.Tensor, name: str) -> None:
    """Refuse NaN and infinite values, saying how many and in which examples."""
    if not (x.is_floating_point() or x.is_complex()) or bool(torch.isfinite(x).all()):
        return
    bad = ~torch.isfinite(x.detach())
    count = int(bad.sum())
    examples = bad.reshape(x.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
    shown = ", ".join(map(str, examples[:5])) + (", ..." if len(examples) > 5 else "")
    where = f"example {shown}" if len(examples) == 1 else f"examples {shown}"
    raise ValueError(
        f"{name}: {count} NaN or infinite value{'s' if count != 1 else ''} (in {where}); "
        "an explanation of them is undefined: clean the input first "
        "((~torch.isfinite(x)).nonzero() lists them)"
    )


def _dtype_hint(dtype: torch.dtype) -> str:
    if dtype == torch.uint8:
        return "convert 8-bit images with x.float() / 255 (or as the model expects them)"
    if dtype.is_complex:
        return "attributions are defined for real inputs; pass x.real or x.abs()"
    if dtype == torch.bool:
        return "convert it with x.float()"
    return "convert it with x.float() (integer token ids belong in additional_forward_args)"


def _describe_object(value: Any) -> str:
    """Name what was passed instead of a tensor, and how to convert it."""
    if isinstance(value, np.ndarray):
        expression = "torch.from_numpy(x)"
        shape = value.shape
        if value.ndim == 4 and shape[-1] in CHANNEL_COUNTS and shape[1] not in CHANNEL_COUNTS:
            expression += ".permute(0, 3, 1, 2)"  # (N, H, W, C) -> (N, C, H, W)
        elif value.ndim == 3 and shape[-1] in CHANNEL_COUNTS and shape[0] not in CHANNEL_COUNTS:
            expression += ".permute(2, 0, 1).unsqueeze(0)"  # one (H, W, C) image
        if value.dtype == np.uint8:
            expression += ".float() / 255"
        elif not np.issubdtype(value.dtype, np.floating):
            expression += ".float()"
        return (
            f"a numpy array of shape {shape} and dtype {value.dtype}; convert it with {expression}"
        )
    module = type(value).__module__
    if module.startswith("PIL"):
        return (
            "a PIL image; convert it with "
            "torchvision.transforms.functional.to_tensor(image).unsqueeze(0)"
        )
    if isinstance(value, list):
        return (
            f"a list of {len(value)}; batch a list of tensors with torch.stack(x), or pass a "
            "tuple of tensors for several inputs"
        )
    return f"{type(value).__name__}"
