"""Captum's ``target`` argument, in every form Captum accepts, turned into per-example indices.

Captum methods accept ``target`` as ``None``, an ``int``, a ``tuple`` (an index into outputs with
more than two dimensions), a scalar or (N,) ``Tensor``, or a ``list`` of ints or tuples (one per
example). Captum's own helper for this is private and has moved between releases, so the project
resolves targets here, in one place. [`target_scores`][ctc_plugin.targets.target_scores] also
accepts pytorch-grad-cam's targets: a list of callables, one per example, each applied to that
example's output row.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ctc_plugin.wording import counted

#: Every form of Captum's ``target``: an int, a tuple of ints (multi-dimensional outputs), an
#: integer tensor, a list of them (one per example), or None (the predicted class, or a model's
#: single output); Integrative CAM also takes a list of callables (pytorch-grad-cam's targets).
TargetType = (
    None
    | int
    | tuple
    | torch.Tensor
    | Sequence[int | tuple | Callable[[torch.Tensor], torch.Tensor]]
)


def _show(value: Any, limit: int = 60) -> str:
    """A short repr of a target for messages."""
    text = repr(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _integer_suggestion(value: Any) -> str:
    """The integer form of a float or bool target, to show the expected form (not a guess)."""
    if isinstance(value, torch.Tensor):
        converted = value.detach().cpu()
        if converted.is_complex():
            converted = converted.real
        if converted.is_floating_point():
            converted = converted.nan_to_num(0.0, 0.0, 0.0)
        return _show(converted.long())
    if isinstance(value, (list, tuple)):
        items = [_integer_suggestion(v) for v in value]
        return (
            f"({', '.join(items)}{',' if len(items) == 1 else ''})"
            if isinstance(value, tuple)
            else f"[{', '.join(items)}]"
        )
    try:
        return str(int(value.real if isinstance(value, complex) else value))
    except (OverflowError, TypeError, ValueError):  # NaN, inf, or not a number at all
        return "0"


def _is_multi_hot(target: torch.Tensor, n: int) -> bool:
    """Whether ``target`` is ``(n, classes)`` multi-hot labels (only 0 and 1, classes > 1)."""
    if target.dim() != 2 or target.shape[0] != n or target.shape[1] < 2 or target.is_complex():
        return False
    values = target.detach()
    return bool(((values == 0) | (values == 1)).all())


def _wrong_count(count: int, n: int) -> ValueError:
    """The error for ``count`` targets given for ``n`` examples."""
    return ValueError(
        f"got {counted(count, 'target')} for {counted(n, 'example')}; give one per example"
    )


def _not_integer(target: Any, item: Any, example: int | None) -> ValueError:
    """The error for a target that is not made of integer class indices."""
    if isinstance(item, torch.Tensor):
        what = f"{_show(item)} of dtype {item.dtype}"
    else:
        what = f"{_show(item)} (a {type(item).__name__})"
    where = ""
    if example is not None:
        where = f" for example {example} in {_show(target)}"
    return ValueError(
        f"target must be integer class indices, got {what}{where}; pass ints or an integer "
        f"tensor, e.g. target={_integer_suggestion(target)} (a class is a whole number: "
        "convert on purpose, e.g. target.round().long() or int(t))"
    )


def _as_int(value: Any, target: Any, example: int | None) -> int:
    """One integer index (an int, a NumPy integer or a one-element integer tensor)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"target {_show(target)} holds a tensor of shape {tuple(value.shape)} where one "
                "class index belongs; give one index per example"
            )
        if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
            raise _not_integer(target, value, example)
        return int(value.item())
    if isinstance(value, (bool, np.bool_)) or (
        isinstance(value, numbers.Number) and not isinstance(value, numbers.Integral)
    ):
        raise _not_integer(target, value, example)
    if isinstance(value, numbers.Integral):
        return int(value)
    raise ValueError(
        f"target {_show(target)} holds {type(value).__name__} {_show(value)} where a class "
        "index belongs; give ints, or tuples of ints for outputs with more dimensions"
    )


def _as_index(value: Any, target: Any, example: int | None) -> tuple[int, ...]:
    """One example's target as an index tuple into its output (an int is a 1-tuple)."""
    if isinstance(value, tuple):
        return tuple(_as_int(v, target, example) for v in value)
    return (_as_int(value, target, example),)


def example_targets(target: TargetType, n: int) -> list[tuple[int, ...]] | None:
    """Check a Captum target's form and spell it out as one index tuple per example.

    Every form Captum accepts is turned into ``n`` tuples (an int ``c`` is ``(c,)``); ``None`` stays
    ``None``. Only the form is checked here; whether the indices fit the model's output is checked
    by [`resolve_targets`][ctc_plugin.targets.resolve_targets] (negative indices count from the end,
    as in Captum).

    Args:
        target: ``None``, an int, a tuple of ints, an integer tensor of one element or of ``n``,
            or a list of ``n`` ints or tuples.
        n: The number of examples.

    Raises:
        ValueError: A float, bool or complex target (tensor or item), a tensor of another
            shape, a list of the wrong length, or an unsupported type; each with what to pass.
    """
    if target is None:
        return None
    if isinstance(target, torch.Tensor):
        if _is_multi_hot(target, n):
            raise ValueError(
                f"target of shape {tuple(target.shape)} holds only 0 and 1: multi-hot labels, "
                "several classes per example; an attribution explains one class per example: "
                "explain each class in a call of its own (target=c for c in range(classes)), or "
                "one chosen class per example (target=labels.argmax(1)); index pairs into "
                "outputs of more dimensions are given as a list of tuples"
            )
        if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
            raise _not_integer(target, target, None)
        if target.numel() == 1:
            return [(int(target.item()),)] * n
        if target.dim() == 1:
            if target.numel() != n:
                raise _wrong_count(target.numel(), n)
            return [(int(t),) for t in target.tolist()]
        raise ValueError(
            f"a target tensor must hold one class or one per example ({n}); "
            f"got shape {tuple(target.shape)}"
        )
    if isinstance(target, tuple):
        return [_as_index(target, target, None)] * n
    if isinstance(target, list):
        if len(target) != n:
            raise _wrong_count(len(target), n)
        return [_as_index(t, target, i) for i, t in enumerate(target)]
    if isinstance(target, np.ndarray):
        raise ValueError(
            f"target is a numpy array {_show(target)}; pass torch.as_tensor(target) (Captum "
            "takes tensors, ints, tuples and lists)"
        )
    if isinstance(target, str) or not isinstance(target, (numbers.Number, np.generic)):
        raise ValueError(
            f"unsupported target of type {type(target).__name__}: give None, an int, a tuple "
            "of ints, an integer tensor, or a list with one int or tuple per example"
        )
    return [_as_index(target, target, None)] * n


def class_indices(
    target: TargetType,
    n: int,
    num_classes: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One class index per example, shape (N,), for a model with (N, C) outputs.

    The Captum forms [`example_targets`][ctc_plugin.targets.example_targets] accepts (a tuple must
    hold one index here). With ``num_classes``, a negative index counts from the end (``-1`` is the
    last class, as in Captum) and an index out of range is refused; without, the indices are
    returned as given.

    Raises:
        ValueError: ``None``, a form [`example_targets`][ctc_plugin.targets.example_targets]
            refuses, a tuple of more than one index, or a class out of range (the message gives the
            valid range).
    """
    if target is None:
        raise ValueError("target is None; give the class of each example")
    indices = example_targets(target, n)
    assert indices is not None
    if num_classes is not None:
        flat = [_flat_index(index, (num_classes,), i) for i, index in enumerate(indices)]
    else:
        for i, index in enumerate(indices):
            if len(index) != 1:
                raise ValueError(
                    f"target {index} for example {i} has {len(index)} indices but the model "
                    "has one output dimension per example; give one class index"
                )
        flat = [index[0] for index in indices]
    return torch.tensor(flat, dtype=torch.long, device=device)


def _flat_index(index: tuple[int, ...], shape: tuple[int, ...] | torch.Size, example: int) -> int:
    if len(index) != len(shape):
        raise ValueError(
            f"target {index} for example {example} has {len(index)} indices but the model's "
            f"output has {len(shape)} dimensions per example (shape {tuple(shape)})"
        )
    flat = 0
    for i, (value, size) in enumerate(zip(index, shape)):
        if not -size <= value < size:
            shown = value if len(index) == 1 else index
            where = "" if len(shape) == 1 else f" in output dimension {i + 1}"
            raise ValueError(
                f"target {shown} for example {example} is out of range{where}: the model has "
                f"{size} {'classes' if len(shape) == 1 else 'outputs there'}; valid indices "
                f"are 0..{size - 1}, or -{size}..-1 counting from the end"
            )
        flat = flat * size + (value % size)
    return flat


def resolve_targets(
    target: TargetType, output: torch.Tensor, first_example: int = 0
) -> torch.Tensor:
    """Return the flat output index of every example's target, shape (N,).

    Args:
        target: Any Captum target form; ``None`` means the predicted class (argmax), or the
            single output for models that return one value per example. Negative indices count
            from the end, as in Captum.
        output: The model's output for the N examples, shape (N, *out).
        first_example: The position of the first of these examples in the user's batch (for
            the messages, when a batch is explained in parts).

    Raises:
        ValueError: a target out of range, of the wrong length, not made of integers, or of an
            unknown form.
    """
    n = output.shape[0]
    per_example = output.shape[1:]
    if target is None:
        if output.dim() == 1 or per_example.numel() == 1:
            return torch.zeros(n, dtype=torch.long, device=output.device)
        return output.flatten(1).argmax(dim=1)
    indices = example_targets(target, n)
    if output.dim() == 1:
        raise ValueError("the model returns one value per example: pass target=None")
    assert indices is not None
    flat = [_flat_index(index, per_example, first_example + i) for i, index in enumerate(indices)]
    return torch.tensor(flat, dtype=torch.long, device=output.device)


def slice_targets(target: TargetType, n: int, part: slice) -> TargetType:
    """The targets of examples ``part`` of a batch of ``n``, in the form ``target`` was given.

    Per-example forms (a list, an (N,) tensor) are sliced; forms shared by every example pass
    through unchanged.

    Raises:
        ValueError: a per-example form whose length is not ``n``.
    """
    if isinstance(target, torch.Tensor):
        if target.numel() == 1 or target.dim() != 1:
            return target  # one class for all, or a shape resolve_targets will explain
        per_example = target
    elif target is None or isinstance(target, (int, tuple, str)):
        return target
    elif isinstance(target, list):
        per_example = target
    else:
        return target  # resolve_targets names the unsupported type
    if len(per_example) != n:
        raise _wrong_count(len(per_example), n)
    return per_example[part]


def check_finite_target_outputs(scores: torch.Tensor) -> None:
    """Refuse target outputs (one per example) that are NaN or infinite, naming the examples.

    An explanation of a NaN output would be NaN (or an error blaming the method's own
    arithmetic): the model's output is what is wrong. CTC and Integrative CAM refuse it alike.

    Raises:
        ValueError: Naming the examples and their values.
    """
    bad = ~torch.isfinite(scores.detach())
    if bool(bad.any()):
        examples = bad.nonzero().flatten().tolist()
        values = scores.detach()[bad].tolist()
        raise ValueError(
            f"the target outputs of examples {examples[:10]} are {values[:10]}: the model's "
            "output is not finite there (NaN or infinite weights or activations, or a "
            "float16 overflow), so there is nothing to explain; check the model and its inputs"
        )


def output_not_a_tensor(output: Any, modules_only: bool = False) -> ValueError:
    """The error for a forward function whose output is no tensor of scores, saying what to do.

    A Hugging Face model's output (``ImageClassifierOutput``) carries the logits in ``.logits``:
    the message names the wrapper. A dict (or a backbone's output, which holds features, no
    scores) is told its keys; a tuple to return the scores alone. ``modules_only``: the caller
    takes a ``torch.nn.Module`` (``explain_func``, ``CTCAttributor``), so the advice is a module
    (the wrapper, or one returning the scores), not a function.
    """
    kind = type(output).__name__
    who, alone = "forward_func", "lambda x: model(x)[key]"
    if modules_only:
        who, alone = "the model", "a module whose forward returns model(x)[key]"
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        advice = (
            "it holds them in .logits (a Hugging Face model's output): wrap the model, "
            "ctc_plugin.adapters.huggingface.HuggingFaceClassifier(model)"
            + ("" if modules_only else ", or pass lambda x: model(pixel_values=x).logits")
        )
    elif isinstance(output, Mapping):  # a dict, or a Hugging Face backbone's output
        keys = ", ".join(repr(key) for key in output)
        advice = (
            f"it holds {keys}; return the class scores, (N, classes), alone ({alone}); a "
            "backbone's features are no scores: add a classification head (a Hugging Face "
            "...ForImageClassification model has one)"
        )
    elif isinstance(output, (tuple, list)):
        advice = "return the scores alone, (N, classes), " + (
            "from a module wrapping the model (its forward returning model(x)[0])"
            if modules_only
            else "e.g. lambda x: model(x)[0]"
        )
    else:
        advice = "return the model's scores, (N, classes)"
    return ValueError(f"{who} returned {kind}, not a tensor of scores; {advice}")


def captum_targets(
    indices: torch.Tensor, output_shape: tuple[int, ...] | None
) -> torch.Tensor | list[tuple[int, ...]] | None:
    """Flat output indices (`resolve_targets`) back in Captum's target form.

    Args:
        indices: (N,) flat index of each example's target in its output.
        output_shape: The shape of one example's output (``None``: not known).

    Returns:
        ``None`` for a model with one value per example (Captum takes no other target
        there), ``indices`` themselves (one class index per example) for outputs of one
        dimension per example or of an unknown shape, or one index tuple per example for
        outputs of more (what Captum takes as ``target=`` for them).
    """
    if output_shape is not None and len(output_shape) == 0:
        return None
    if output_shape is None or len(output_shape) == 1:
        return indices
    unravelled = torch.stack(torch.unravel_index(indices.cpu(), output_shape), dim=1)
    return [tuple(row) for row in unravelled.tolist()]


def select_targets(output: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Pick each example's target value from (N, *out) outputs given flat indices (N,)."""
    if output.dim() == 1:
        return output
    return output.flatten(1).gather(1, indices.view(-1, 1)).squeeze(1)


def target_scores(output: torch.Tensor, target: TargetType) -> torch.Tensor:
    """Each example's target score, shape (N,), differentiable with respect to ``output``.

    Args:
        output: The model's output, (N, *out).
        target: Any Captum target form, or a list of callables (pytorch-grad-cam's
            ``ClassifierOutputTarget`` and friends), one per example, each mapping that
            example's output row to a scalar (a one-element result counts as one).

    Raises:
        ValueError: a target that does not fit the output; a callable that fails on its row
            or returns more than one value (named in the message).
    """
    if _callables(target):
        check_target(target, output.shape[0])
        return torch.stack(
            [_callable_score(t, row, i) for i, (t, row) in enumerate(zip(target, output))]
        )
    return select_targets(output, resolve_targets(target, output.detach()))


def _callables(target: TargetType) -> bool:
    """Whether ``target`` is a list of callables (pytorch-grad-cam's targets)."""
    return (
        isinstance(target, Sequence)
        and not isinstance(target, (str, tuple))
        and len(target) > 0
        and all(callable(t) for t in target)
    )


def check_target(target: TargetType, n: int) -> None:
    """Check a target's form for ``n`` examples before anything runs (as `target_scores`).

    Any Captum form (see [`example_targets`][ctc_plugin.targets.example_targets]) or a list of ``n``
    callables; whether the indices fit the model's output is known only once it has run.

    Raises:
        ValueError: As [`example_targets`][ctc_plugin.targets.example_targets]; a list of callables
            of the wrong length.
    """
    if _callables(target):
        if len(target) != n:
            raise _wrong_count(len(target), n)
        return
    example_targets(target, n)


def _callable_score(
    target: Callable[[torch.Tensor], torch.Tensor], row: torch.Tensor, i: int
) -> torch.Tensor:
    """Apply a pytorch-grad-cam style target to example ``i``'s output row; one score, shape ().

    As in pytorch-grad-cam, the target must reduce the row to a single value: a result with one
    element (``RawScoresOutputTarget`` or ``BinaryClassifierOutputTarget`` on a model with one
    output per example) is that score; a result with more elements cannot be explained.

    Raises:
        ValueError: The target failed on the row, or returned more (or fewer) than one value.
    """
    name = type(target).__name__
    try:
        score = target(row)
    except (IndexError, RuntimeError, TypeError, ValueError) as error:
        raise ValueError(
            f"target {name} failed on example {i}'s output of shape {tuple(row.shape)}: {error}"
        ) from error
    score = torch.as_tensor(score)
    if score.numel() != 1:
        raise ValueError(
            f"target {name} returned shape {tuple(score.shape)} for example {i}'s output of "
            f"shape {tuple(row.shape)}; a target must reduce each example's output to one score. "
            "RawScoresOutputTarget and BinaryClassifierOutputTarget fit models with one output "
            "per example; for a multi-class model use ClassifierOutputTarget(class) or "
            "ClassifierOutputSoftmaxTarget(class)"
        )
    return score.reshape(())
