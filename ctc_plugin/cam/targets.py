"""Pick one score per example from a model's output, for every form of target Captum accepts.

Besides Captum's forms, a list of callables is accepted: pytorch-grad-cam's targets
(``ClassifierOutputTarget(c)`` and friends), each called on its example's row of the output.
``None`` means the predicted class (the arg-max of each example's output), as in
pytorch-grad-cam; an output with one value per example is used as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Target = None | int | tuple | Tensor | Sequence[int | tuple | Callable[[Tensor], Tensor]]


def _column(output: Tensor, index: int | tuple) -> Tensor:
    index = (index,) if isinstance(index, int) else tuple(index)
    if len(index) != output.dim() - 1:
        raise ValueError(
            f"target {index} has {len(index)} indices but the output has shape "
            f"{tuple(output.shape)}: give one index per non-batch dimension"
        )
    return output[(slice(None), *index)]


def select_scores(output: Tensor, target: Target) -> Tensor:
    """Return the target score of each example, shape (N,).

    Args:
        output: The model output, batch first.
        target: ``None`` (predicted class), an int or tuple (the same for every example), a
            scalar tensor, a 1-D tensor or list of ints or tuples (one per example), or a list of
            callables (one per example, each mapping that example's output row to a scalar).

    Raises:
        ValueError: If the target does not fit the output.
    """
    n = output.shape[0]
    if target is None:
        if output.dim() == 1:
            return output
        flat = output.reshape(n, -1)
        return flat.gather(1, flat.detach().argmax(dim=1, keepdim=True)).squeeze(1)
    if isinstance(target, Tensor):
        if target.numel() == 1:
            return _column(output, int(target.item()))
        if target.dim() == 1 and target.numel() == n:
            target = target.tolist()
        else:
            raise ValueError(
                f"a target tensor must hold one index or one per example ({n}), "
                f"got shape {tuple(target.shape)}"
            )
    if isinstance(target, (int, tuple)):
        return _column(output, target)
    if isinstance(target, Sequence) and not isinstance(target, str):
        if len(target) != n:
            raise ValueError(f"got {len(target)} targets for {n} examples; give one per example")
        if all(callable(t) for t in target):
            return torch.stack(
                [torch.as_tensor(t(row)).reshape(()) for t, row in zip(target, output)]
            )
        if all(isinstance(t, int) for t in target):
            if output.dim() != 2:
                raise ValueError("a list of int targets needs a 2-D output; use tuples")
            index = torch.tensor(list(target), device=output.device).reshape(n, 1)
            return output.gather(1, index).squeeze(1)
        if all(isinstance(t, tuple) for t in target):
            return torch.stack([_column(output[i : i + 1], t)[0] for i, t in enumerate(target)])
    raise ValueError(
        f"unsupported target {target!r}: use None, an int, a tuple, a tensor, or a list of ints, "
        "tuples or callables (one per example)"
    )
