"""Captum's ``target`` argument, in every form Captum accepts, turned into per-example indices.

Captum methods accept ``target`` as ``None``, an ``int``, a ``tuple`` (an index into outputs
with more than two dimensions), a scalar or (N,) ``Tensor``, or a ``list`` of ints or tuples
(one per example). Captum's own helper for this is private and has moved between releases,
so the project resolves targets here, in one place. :func:`target_scores` also accepts
pytorch-grad-cam's targets: a list of callables, one per example, each applied to that
example's output row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

TargetType = (
    None
    | int
    | tuple
    | torch.Tensor
    | Sequence[int | tuple | Callable[[torch.Tensor], torch.Tensor]]
)


def _flat_index(index: tuple[int, ...], shape: torch.Size, example: int) -> int:
    if len(index) != len(shape):
        raise ValueError(
            f"target {index} for example {example} has {len(index)} indices but the model's "
            f"output has {len(shape)} dimensions per example (shape {tuple(shape)})"
        )
    flat = 0
    for i, (value, size) in enumerate(zip(index, shape)):
        if not -size <= value < size:
            raise ValueError(
                f"target {index} for example {example} is out of range in output dimension "
                f"{i + 1} of size {size}; valid classes are 0..{size - 1}"
            )
        flat = flat * size + (value % size)
    return flat


def resolve_targets(target: TargetType, output: torch.Tensor) -> torch.Tensor:
    """Return the flat output index of every example's target, shape (N,).

    Args:
        target: Any Captum target form; ``None`` means the predicted class (argmax), or the
            single output for models that return one value per example.
        output: The model's output for the N examples, shape (N, *out).

    Raises:
        ValueError: a target out of range, of the wrong length, or of an unknown form.
    """
    n = output.shape[0]
    per_example = output.shape[1:]
    if target is None:
        if output.dim() == 1 or per_example.numel() == 1:
            return torch.zeros(n, dtype=torch.long, device=output.device)
        return output.flatten(1).argmax(dim=1)
    if output.dim() == 1:
        raise ValueError("the model returns one value per example: pass target=None")
    if isinstance(target, torch.Tensor):
        if target.numel() == 1:
            target = int(target.item())
        elif target.dim() == 1 and target.numel() == n:
            target = [int(t) for t in target.tolist()]
        else:
            raise ValueError(
                f"a target tensor must hold one class or one per example ({n}); "
                f"got shape {tuple(target.shape)}"
            )
    if isinstance(target, bool):
        raise ValueError(f"target must be a class index, not {target!r}")
    if isinstance(target, int):
        target = [target] * n
    elif isinstance(target, tuple):
        target = [target] * n
    if not isinstance(target, Sequence) or isinstance(target, str):
        raise ValueError(f"unsupported target of type {type(target).__name__}")
    if len(target) != n:
        raise ValueError(f"got {len(target)} targets for {n} examples; give one per example")
    flat = [
        _flat_index(t if isinstance(t, tuple) else (int(t),), per_example, i)
        for i, t in enumerate(target)
    ]
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
    elif isinstance(target, Sequence):
        per_example = target
    else:
        return target  # resolve_targets names the unsupported type
    if len(per_example) != n:
        raise ValueError(f"got {len(per_example)} targets for {n} examples; give one per example")
    return per_example[part]


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
    if (
        isinstance(target, Sequence)
        and not isinstance(target, (str, tuple))
        and len(target) > 0
        and all(callable(t) for t in target)
    ):
        if len(target) != output.shape[0]:
            raise ValueError(
                f"got {len(target)} targets for {output.shape[0]} examples; give one per example"
            )
        return torch.stack(
            [_callable_score(t, row, i) for i, (t, row) in enumerate(zip(target, output))]
        )
    return select_targets(output, resolve_targets(target, output.detach()))


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
