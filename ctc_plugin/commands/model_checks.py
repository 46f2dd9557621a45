"""What a loaded model gives for one image, and whether the methods can take it.

``ctc-plugin explain`` and ``explain-dataset`` check a model before any method runs (its input
channels, TorchScript, weights without values, half-precision weights) and read its output
for each image: one row of finite class scores, or a refusal saying what the model must return;
the ``--target`` class by index or name. A model that fails on an image of another size than its
own gets the ``--resize``/``--crop`` advice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ctc_plugin.commands import CLIError
from ctc_plugin.commands.models import LoadedModel
from ctc_plugin.wording import counted

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from ctc_plugin.images import ImagePreprocessing


def check_input_channels(loaded: LoadedModel) -> None:
    """Refuse a model whose first convolution does not take the 3 channels of an RGB image.

    A ``torchvision.transforms.Grayscale()`` in front of it makes it take RGB.
    """
    from torch import nn
    from torchvision.transforms import Grayscale

    layers = (nn.Conv2d, Grayscale)  # a model behind Grayscale() takes RGB
    first = next((m for m in loaded.network.modules() if isinstance(m, layers)), None)
    if isinstance(first, nn.Conv2d) and first.in_channels != 3:
        advice = (
            "; for a grayscale model, build it behind a conversion in your module: "
            "return torch.nn.Sequential(torchvision.transforms.Grayscale(), model)"
            if first.in_channels == 1
            else ""
        )
        raise CLIError(
            f"--model {loaded.name} takes {first.in_channels}-channel images; explain reads "
            f"every image as 3-channel RGB{advice}"
        )


def check_torchscript(loaded: LoadedModel, methods: list[str]) -> None:
    """Refuse, for a TorchScript model, the methods that follow or hook its layers.

    CTC follows the model's operations, Integrative CAM and Grad-CAM hook its layers; a
    TorchScript model runs them outside Python. Captum's FeatureAblation and Lime only call it.

    Raises:
        CLIError: Naming the methods and what to give instead.
    """
    import torch

    from ctc_plugin.commands.methods import CALL_ONLY_METHODS

    scripted = any(
        isinstance(module, torch.jit.ScriptModule) for module in loaded.network.modules()
    )
    hooking = [name for name in methods if name not in CALL_ONLY_METHODS]
    if scripted and hooking:
        raise CLIError(
            f"--model {loaded.name} is TorchScript (torch.jit.script, trace or load), whose "
            f"layers run outside Python: --method {' '.join(hooking)} cannot follow or hook "
            "them. Give the model as its Python nn.Module (a callable that builds it, its state "
            f"dict with --weights), or choose --method {' '.join(CALL_ONLY_METHODS)}, which "
            "only call the model"
        )


def check_weights_present(loaded: LoadedModel) -> None:
    """Refuse a model whose weights are on the meta device: shapes without values.

    Raises:
        CLIError: Saying how such a model comes about and how to give it its weights.
    """
    tensors = [*loaded.network.parameters(), *loaded.network.buffers()]
    if any(tensor.is_meta for tensor in tensors):
        raise CLIError(
            f"--model {loaded.name} has weights on the meta device, shapes without values "
            "(built under torch.device('meta') or an empty-weights initialisation; --weights "
            "cannot fill them): build it on the CPU, or load its weights in the callable with "
            "model.load_state_dict(state, assign=True)"
        )


#: Floating-point types the command runs in float32 (half precision, computed more exactly).
NARROW_TYPES = ("float16", "bfloat16")


def choose_precision(loaded: LoadedModel, device: torch.device | str | None = None) -> str:
    """Cast a model with half-precision weights to float32; return a note, or ``""``.

    A float16 or bfloat16 model runs in float32 (exact for its weights; its half-precision
    kernels are missing or slow on a CPU, and float32 computes the explanation more exactly). A
    float64 model keeps its weights, which float32 would round, and gets its images in float64
    (`model_pixels`: exact), so that a forward that converts its input itself
    (``x = x.double()``) runs as it was written; on ``mps``, which has no float64, it runs in
    float32 too. `run_precision` says which type a model runs in, without casting it.
    """
    kinds = _other_floating_types(loaded.network)
    if not _runs_in_float32(kinds, device):
        return ""
    loaded.network = loaded.network.float()
    loaded.cast_from = tuple(sorted(kinds))
    why = " (mps has no float64)" if _has_no_float64(device) and "float64" in kinds else ""
    return (
        f"--model {loaded.name} has {' and '.join(sorted(kinds))} weights; it runs in float32{why}"
    )


def run_precision(network: nn.Module, device: torch.device | str | None = None) -> str:
    """The floating-point type the commands run ``network`` in on ``device`` (``"float64"``).

    What `choose_precision` makes of it and `model_pixels` gives it: ``"float32"`` for
    half-precision weights (and for float64 ones on ``mps``), otherwise its weights' own type
    (``"float64"`` for a float64 model), ``"float32"`` for a model without floating-point
    weights. ``network`` is not changed. An ``explain-dataset`` run records it (its results
    depend on it) and refuses a resume in another.
    """
    import torch

    from ctc_plugin.inputs import floating_dtype

    if _runs_in_float32(_other_floating_types(network), device):
        return "float32"
    return str(floating_dtype(network) or torch.float32).removeprefix("torch.")


def _other_floating_types(network: nn.Module) -> set[str]:
    """The floating-point types of ``network``'s weights and buffers other than float32."""
    import torch

    tensors = [*network.parameters(), *network.buffers()]
    return {
        str(tensor.dtype).removeprefix("torch.")
        for tensor in tensors
        if tensor.is_floating_point() and tensor.dtype != torch.float32
    }


def _runs_in_float32(kinds: set[str], device: torch.device | str | None) -> bool:
    """Whether a model of the weight types ``kinds`` (besides float32) is cast to float32."""
    return bool(kinds.intersection(NARROW_TYPES)) or (_has_no_float64(device) and bool(kinds))


def _has_no_float64(device: torch.device | str | None) -> bool:
    """Whether ``device`` has no float64 (``mps``); ``None`` or a name torch does not know: no."""
    import torch

    if device is None:
        return False
    try:
        return torch.device(device).type == "mps"
    except (RuntimeError, TypeError, ValueError):
        return False


def loaded_dtype(loaded: LoadedModel) -> torch.dtype:
    """The floating-point type a loaded model runs in: its weights' (after `choose_precision`).

    float32, or float64 for a float64 model; a model without floating-point weights runs in
    float32. What `run_precision` foretells of the model before it is loaded and cast.
    """
    import torch

    from ctc_plugin.inputs import floating_dtype

    return floating_dtype(loaded.network) or torch.float32


def model_pixels(loaded: LoadedModel, pixels: torch.Tensor, device: Any) -> torch.Tensor:
    """``pixels`` as the model takes them: on ``device``, in the type it runs in.

    See `loaded_dtype`: float32, or float64 for a float64 model.
    """
    return pixels.to(device=device, dtype=loaded_dtype(loaded))


def model_logits(
    model: nn.Module,
    loaded: LoadedModel,
    pixels: torch.Tensor,
    own_size: bool,
    advice: str | None = None,
    where: str = "",
) -> torch.Tensor:
    """The model's logits for ``pixels``; a size the model cannot take is a user error.

    Args:
        model: The wrapped model (preprocessing included).
        loaded: What ``--model`` named, for the message.
        pixels: ``(1, 3, H, W)`` pixels.
        own_size: Whether ``pixels`` has the model's own input size.
        advice: What to do about another size (``None``: ``explain``'s ``--resize`` and
            ``--crop``).
        where: The image, for a refusal among several (``""``: none named).

    Raises:
        CLIError: If the model returns no row of class scores (`scores_row`), fails with
            torch's error for operands of two floating-point types (`_dtype_refusal`), or fails
            on an image of another size than its own input (a RuntimeError from its layers, the
            ValueError of a ``transformers`` model, the AssertionError of a timm model's patch
            embedding). At its own size such an error is raised as it is (a RuntimeError is
            then a bug: a traceback).
    """
    import torch

    from ctc_plugin.inputs import is_dtype_error

    try:
        with torch.no_grad():
            output = model(pixels)
    except (RuntimeError, ValueError, AssertionError) as error:  # see Raises
        lines = str(error).strip().splitlines()
        first = lines[0] if lines else type(error).__name__
        image = f"{where}: " if where else ""
        if is_dtype_error(error):  # its types, whatever the image's size
            raise CLIError(
                f"--model {loaded.name}: {image}{_dtype_refusal(loaded, pixels, first)}"
            ) from error
        if own_size:
            raise
        height, width = pixels.shape[-2:]
        option = "--resize/--crop: " if advice is None else ""
        advice = advice if advice is not None else size_advice(loaded.preprocessing)
        raise CLIError(
            f"{option}{image}{loaded.name} cannot take {width}x{height} images ({first}); {advice}"
        ) from error
    return scores_row(output, loaded, where)


def _dtype_refusal(loaded: LoadedModel, pixels: torch.Tensor, first: str) -> str:
    """Why a model failed with torch's dtype error (``first``) on ``pixels``, and what to do.

    The command gives a model its images in its weights' type (`model_pixels`), float32 for
    half-precision weights it cast (`choose_precision`); a forward that converts them to
    another type, or layers of several types, meet in one operation.
    """
    dtype = str(pixels.dtype).removeprefix("torch.")
    weights = (
        f"its {' and '.join(loaded.cast_from)} weights cast to {dtype} (the command runs half "
        "precision in float32)"
        if loaded.cast_from
        else "its weights' type"
    )
    return (
        f"it fails on {dtype} images, {weights}, with torch's error for two floating-point "
        f"types ({first}), not on their size: a conversion in its forward (x.double(), "
        "x.half()) or layers of several types meet in one operation; convert the input to the "
        "type of the layer that takes it (x = x.to(self.conv.weight.dtype), which follows a "
        "cast), or build every layer in one type (model.double() or model.float())"
    )


def scores_row(output: Any, loaded: LoadedModel, where: str = "") -> torch.Tensor:
    """The class scores ``(classes,)`` (on the CPU) of a model's output for one image.

    float32, or float64 where the model computes in float64: saved as the model gave them, so
    that CTC's float64 scores add up to the saved logit to float64 rounding (float32 logits
    were 1e-8 off). Half-precision outputs (a forward that casts itself) become float32.

    Every method takes the model's output as a float tensor ``(N, classes)``; anything else is
    refused here, before any method runs, instead of failing inside one (a tuple or a dict) or
    being misread (scores without their batch dimension, class indices). ``where``: the image,
    for a refusal among several (``""``: none named), as `model_logits` names it.

    Raises:
        CLIError: Naming ``--model``, the image (with ``where``), what it returned and what to
            return instead.
    """
    import torch

    from ctc_plugin.targets import output_not_a_tensor

    image = f"{where}: " if where else ""
    if not isinstance(output, torch.Tensor):
        refusal = output_not_a_tensor(output, modules_only=True)
        raise CLIError(f"--model {loaded.name}: {image}{refusal}")
    if output.dim() != 2 or output.shape[0] != 1 or not output.is_floating_point():
        flat = output.dim() > 2 and all(size == 1 for size in output.shape[2:])
        advice = (
            "flatten its trailing dims of size 1 (a convolutional head): torch.flatten(out, 1)"
            if flat
            else "return the logits of the classification head, not class indices nor a row "
            "without its batch dimension"
        )
        returns = f": {image}it returns" if where else " returns"
        raise CLIError(
            f"--model {loaded.name}{returns} a tensor of "
            f"{str(output.dtype).removeprefix('torch.')} "
            f"shaped {tuple(output.shape)} for one image; the methods need its class scores, "
            f"floats shaped (1, classes), one row per image: {advice}"
        )
    row = output[0].detach().cpu()
    return row if row.dtype == torch.float64 else row.float()


def check_finite_scores(logits: torch.Tensor, loaded: LoadedModel, name: str) -> None:
    """Refuse scores that are NaN or infinite (of the image ``name``): nothing to explain.

    Raises:
        CLIError: Naming the image, the values and what to check.
    """
    finite = logits.isfinite()
    if bool(finite.all()):
        return
    values = ", ".join(sorted({str(value) for value in logits[~finite].tolist()}))
    raise CLIError(
        f"--model {loaded.name} gives scores that are not finite for {name} ({values}): there "
        "is nothing to explain; check its weights (--weights), the normalisation it expects "
        "(--mean/--std) and the floating-point type it computes in"
    )


def fit_class_names(loaded: LoadedModel, logits: torch.Tensor) -> None:
    """Forget the model's class names where its scores have another number of classes.

    Weights fine-tuned to other classes build the head with their own class count (a
    torchvision ``resnet18`` with a 3-class head); the architecture's names (ImageNet's) are
    then not the model's classes, which are numbered instead.
    """
    if loaded.classes is not None and len(loaded.classes) != logits.numel():
        loaded.classes = None


def size_advice(own: ImagePreprocessing) -> str:
    """What to do about an image size the model cannot take, given its own preprocessing.

    ``explain`` and ``explain-dataset`` both take the options it names.
    """
    if own.crop is None:
        return "give it the input size it was built for: --resize N --crop N"
    return f"its own input is {own.describe()} (--resize {own.resize} --crop {own.crop})"


def is_own_size(preprocessing: ImagePreprocessing, size: tuple[int, int]) -> bool:
    """Whether ``size`` (height, width) is the model's own input: its preprocessing's crop."""
    crop = preprocessing.crop
    if crop is None:
        return False
    return size == (crop if isinstance(crop, tuple) else (crop, crop))


def target_class(
    spec: str | None, loaded: LoadedModel, logits: torch.Tensor, option: str = "--target"
) -> int:
    """The class ``--target`` names: ``None`` the predicted one, an index, or a class name.

    ``option`` is the option's name in error messages (``explain-dataset`` has ``--targets``).
    """
    if spec is None:
        return int(logits.argmax())
    text = spec.strip()
    name = class_name(text, loaded.classes) if loaded.classes is not None else None
    # int() also takes "²" or Arabic digits; one minus sign at most ("--3" is no number)
    if text.isascii() and text.removeprefix("-").isdigit():
        target = int(text)
    elif name is not None:
        target = _named_class(name, loaded.classes, option)
    else:
        names = f" (0 to {logits.numel() - 1}); this model has no class names"
        if loaded.classes:
            import difflib

            lower = {known.lower(): known for known in loaded.classes}
            close = [lower[c] for c in difflib.get_close_matches(text.lower(), lower, cutoff=0.75)]
            shown = loaded.classes if len(loaded.classes) <= 10 else loaded.classes[:5] + ["..."]
            names = f" or a class name ({', '.join(shown)})"
            if close:
                names += f"; did you mean {', '.join(repr(c) for c in close)}?"
        raise CLIError(f"{option} {spec!r}: give a class index{names}")
    count = logits.numel()
    if not -count <= target < count:
        classes = counted(count, "class", "classes")
        raise CLIError(
            f"{option} {target} out of range: the model has {classes} (0 to {count - 1}, "
            f"or -{count} to -1 counting from the end)"
        )
    return target % count  # a negative index counts from the end, as in Python and Captum


def class_name(text: str, classes: list[str]) -> str | None:
    """The class name ``text`` spells: exactly, or in another case (``Tabby`` is ``tabby``)."""
    if text in classes:
        return text
    same = {known for known in classes if known.lower() == text.lower()}
    return same.pop() if len(same) == 1 else None


def _named_class(name: str, classes: list[str], option: str) -> int:
    """The index of the class ``name``; a name several classes share is refused.

    timm names ImageNet's classes by their first synonym, so that ``crane`` is the bird (134)
    and the machine (517).

    Raises:
        CLIError: Naming the classes that share ``name``, whose index to give instead.
    """
    indices = [index for index, known in enumerate(classes) if known == name]
    if len(indices) > 1:
        listed = ", ".join(str(index) for index in indices)
        raise CLIError(
            f"{option} {name!r} names {len(indices)} classes ({listed}): give the index of "
            "the one to explain"
        )
    return indices[0]


def output_function(model: nn.Module, pixels: torch.Tensor) -> str | None:
    """The name of the torch function whose result the model returns (``"sigmoid"``, ...).

    ``None`` where the output is no torch function's result as it is (a tuple, an attribute of
    an output object), or where the model cannot run under a torch function mode (compiled
    code that this torch cannot run eagerly): the name only words the report.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    from ctc_plugin.module_state import compiled_code_eager

    class _Last(TorchFunctionMode):
        last: tuple[object, str] | None = None

        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
            result = func(*args, **(kwargs or {}))
            if isinstance(result, torch.Tensor):
                self.last = (result, getattr(func, "__name__", ""))
            return result

    trace = _Last()
    try:
        with torch.no_grad(), compiled_code_eager(), trace:
            output = model(pixels)
    except Exception:  # noqa: BLE001 - the model ran before this: nothing to report here
        return None
    if trace.last is None or trace.last[0] is not output:
        return None
    return trace.last[1]


__all__ = [
    "check_finite_scores",
    "check_input_channels",
    "check_torchscript",
    "check_weights_present",
    "class_name",
    "is_own_size",
    "model_logits",
    "output_function",
    "choose_precision",
    "model_pixels",
    "loaded_dtype",
    "run_precision",
    "scores_row",
    "size_advice",
    "target_class",
]
