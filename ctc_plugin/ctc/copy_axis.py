"""Where the copies lie after a reshaping: follow the copy axis through shape operations.

The copies of a CTC pass travel along dim 0 of every propagated tensor. Vision transformers move it
for a moment: Swin splits ``qkv`` with ``reshape(...).permute(2, 0, 3, 1, 4)`` and selects
``qkv[0]``; window partitions merge the batch with the windows (``reshape(B * windows, ...)``).
[`follow_copy_axis`][ctc_plugin.ctc.handlers.follow_copy_axis] tells where the copies are in the
result of such a shape operation, or refuses an operation that would mix them (selecting or slicing
copies, merging the batch with a dim before it, concatenating along it). Rules apply only while the
copies lie along dim 0, except those confined to the last dims (elementwise rules, ``linear``,
``layer_norm`` over dims after the copies: OpenAI CLIP's sequence-first ``(L, N, D)``), which
[`CTCMode`][ctc_plugin.ctc.attribution.CTCMode] runs with the copies moved back to dim 0; it
refuses any other operation on a tensor whose copies lie elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ctc_plugin.ctc.errors import UnsupportedOperationError


def _normalised(dim: int, rank: int) -> int:
    return dim % rank if rank else 0


def _dims(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    return [int(d) for d in value]


def _argument(args: tuple, kwargs: dict, index: int, *names: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    for name in names:
        if name in kwargs:
            return kwargs[name]
    return default


def attribute_name(func: Callable[..., Any]) -> str | None:
    """The tensor attribute a call reads (``"mT"`` for ``x.mT``), ``None`` for other calls.

    Torch hands an attribute read to a torch function mode as its descriptor's ``__get__``.
    """
    descriptor = getattr(func, "__self__", None)
    if getattr(func, "__name__", None) == "__get__" and hasattr(descriptor, "__objclass__"):
        return descriptor.__name__
    return None


def follow_copy_axis(
    func: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    x: torch.Tensor,
    axis: int,
    out: torch.Tensor,
    batch: int,
) -> int:
    """The dim of ``out`` that holds the copies, ``x``'s being ``axis``.

    Args:
        func: The shape operation (``permute``, ``reshape``, ``__getitem__``, ...).
        args: Its positional arguments (``x`` first).
        kwargs: Its keyword arguments.
        x: The propagated input.
        axis: The dim of ``x`` that holds the copies.
        out: The operation's result (one of them, for ``chunk``/``split``/``unbind``).
        batch: Examples x copies: the copy dim's size is a multiple of it.

    Raises:
        UnsupportedOperationError: The operation selects, slices, splits or reorders copies,
            or merges them with a dim before them.
    """
    name = attribute_name(func) or getattr(func, "__name__", "")
    rank = x.dim()
    refusal = f"torch.Tensor.{name}"
    if name in ("mT", "mH"):  # the last two dims swapped
        return {rank - 2: rank - 1, rank - 1: rank - 2}.get(axis, axis)
    if name in ("T", "H"):  # every dim reversed (a matrix transposed)
        return rank - 1 - axis
    if name == "permute":
        dims = _argument(args, kwargs, 1, "dims")
        if isinstance(dims, int):
            dims = args[1:]
        return [_normalised(d, rank) for d in _dims(dims)].index(axis)
    if name == "t":  # the transpose of a matrix; vectors stay as they are
        return 1 - axis if rank == 2 else axis
    if name in ("transpose", "swapaxes", "swapdims"):
        first = _normalised(_argument(args, kwargs, 1, "dim0", "axis0"), rank)
        second = _normalised(_argument(args, kwargs, 2, "dim1", "axis1"), rank)
        return second if axis == first else first if axis == second else axis
    if name in ("movedim", "moveaxis"):
        sources = [_normalised(d, rank) for d in _dims(_argument(args, kwargs, 1, "source"))]
        targets = [_normalised(d, rank) for d in _dims(_argument(args, kwargs, 2, "destination"))]
        order: list[int | None] = [None] * rank
        for source, target in zip(sources, targets):
            order[target] = source
        rest = iter(d for d in range(rank) if d not in sources)
        return [d if d is not None else next(rest) for d in order].index(axis)
    if name == "unsqueeze":
        dim = _normalised(_argument(args, kwargs, 1, "dim"), rank + 1)
        return axis + int(dim <= axis)
    if name == "squeeze":
        dims = _argument(args, kwargs, 1, "dim")
        removed = range(rank) if dims is None else [_normalised(d, rank) for d in _dims(dims)]
        return axis - sum(1 for d in removed if d < axis and x.shape[d] == 1)
    if name in ("expand", "expand_as"):
        return axis + out.dim() - rank
    if name == "unfold":  # Tensor.unfold: windows along one dim, in a new last dim
        if _normalised(_argument(args, kwargs, 1, "dimension"), rank) == axis:
            raise UnsupportedOperationError(refusal, "it slides windows along the copies")
        return axis
    if name == "__getitem__":
        return _through_index(args[1], x, axis, refusal)
    if name == "__iter__":  # iterating a tensor unbinds its dim 0
        return _along_other_dims("unbind", (x, 0), {}, x, axis, refusal)
    if name == "repeat_interleave":
        return _repeated_in_place(args, kwargs, x, axis, refusal)
    if name in ("chunk", "split", "unbind", "narrow", "roll", "flip", "repeat"):
        return _along_other_dims(name, args, kwargs, x, axis, refusal)
    if name in ("cat", "concat", "concatenate", "stack"):
        dim = _argument(args, kwargs, 1, "dim", "axis", default=0)
        if name == "stack":
            dim = _normalised(dim, out.dim())
            return axis + int(dim <= axis)
        if _normalised(dim, rank) == axis:
            raise UnsupportedOperationError(refusal, "it concatenates along the copies")
        return axis
    return _through_reshape(x, axis, out, batch, refusal)


#: Reductions that may run while the copies lie off dim 0, over other dims (an ensemble's
#: ``torch.stack(outputs).mean(0)``).
REDUCTIONS = frozenset({torch.mean, torch.Tensor.mean, torch.sum, torch.Tensor.sum})


def reduced_copy_axis(name: str, args: tuple, kwargs: dict, x: torch.Tensor, axis: int) -> int:
    """The copy dim after a mean or sum of ``x`` (copies along ``axis``, 0 too) over other dims.

    ``name`` is the operation's as the user wrote it (``torch.mean``, ``torch.Tensor.sum``),
    for the refusals.

    Raises:
        UnsupportedOperationError: The reduction runs over the copies (no ``dim``, or ``dim``
            holds ``axis``): it would mix them.
    """
    rank = x.dim()
    dims = _argument(args, kwargs, 1, "dim", "axis")
    keepdim = bool(_argument(args, kwargs, 2, "keepdim", default=False))
    if isinstance(dims, torch.dtype) or dims is None or (not isinstance(dims, int) and not dims):
        dims = range(rank)  # every dim
    if not all(isinstance(d, int) for d in _listed(dims)):
        raise UnsupportedOperationError(
            name, "it reduces over named dims, which CTC cannot tell apart from the copies' dim"
        )
    reduced = {_normalised(d, rank) for d in _listed(dims)}
    if axis in reduced and len(reduced) == rank:
        raise UnsupportedOperationError(
            name,
            "it reduces the whole tensor, the batch of copies with it, and would mix them; "
            "reduce over the dims of one example (a forward function returns one output per "
            "example of its batch)",
        )
    if axis in reduced:
        raise UnsupportedOperationError(
            name,
            f"it reduces over dim {axis}, which holds the copies, and would mix them; reduce "
            "over the dims of one example",
        )
    return axis if keepdim else axis - sum(1 for d in reduced if d < axis)


def _listed(dims: Any) -> list[Any]:
    return [dims] if isinstance(dims, int) else list(dims)


def _along_other_dims(
    name: str, args: tuple, kwargs: dict, x: torch.Tensor, axis: int, refusal: str
) -> int:
    """``chunk``/``split``/``unbind``/``narrow``/``roll``/``flip``/``repeat`` off the copy dim."""
    rank = x.dim()
    if name == "repeat":
        sizes = _dims(args[1]) if len(args) == 2 else _dims(args[1:])
        if sizes[len(sizes) - rank + axis] != 1:
            raise UnsupportedOperationError(refusal, "it repeats the copies")
        return axis + len(sizes) - rank
    if name in ("roll", "flip"):
        dims = _argument(args, kwargs, 2 if name == "roll" else 1, "dims")
        if dims is None or axis in [_normalised(d, rank) for d in _dims(dims)]:
            raise UnsupportedOperationError(refusal, "it moves values across the copies")
        return axis
    index = {"chunk": 2, "split": 2, "unbind": 1, "narrow": 1}[name]
    dim = _normalised(_argument(args, kwargs, index, "dim", default=0), rank)
    if dim == axis:
        raise UnsupportedOperationError(refusal, "it splits the copies apart")
    return axis - int(name == "unbind" and dim < axis)


def _repeated_in_place(args: tuple, kwargs: dict, x: torch.Tensor, axis: int, refusal: str) -> int:
    """``repeat_interleave``: along the copy dim, each row repeated in place (copy-major).

    GCViT repeats each image's global query once per window, ``q.repeat_interleave(windows,
    dim=0)``: every copy's rows stay together, as a window partition keeps them. Refused: no
    ``dim`` (the copies flattened with the rest) and unequal repeats along the copy dim.
    """
    dim = _argument(args, kwargs, 2, "dim")
    if dim is None:
        raise UnsupportedOperationError(refusal, "it flattens the copies with the other values")
    repeats = _argument(args, kwargs, 1, "repeats")
    if _normalised(dim, x.dim()) == axis and not isinstance(repeats, int):
        raise UnsupportedOperationError(refusal, "it repeats the copies unequally")
    return axis


def _keeps_every_row(item: slice, rows: int) -> bool:
    """Whether a slice keeps every one of ``rows`` in order: ``:``, also ``::1`` or ``0:n``.

    (Perceiver's image preprocessor slices ``inputs[::1, ::1]``, meaning its spatial dims.)
    """
    try:
        return item.indices(rows) == (0, rows, 1)
    except TypeError:  # bounds that are no integers (tensors of several values)
        return False


def _through_index(index: Any, x: torch.Tensor, axis: int, refusal: str) -> int:
    """The copy dim after ``x[index]``: basic indexing off the copy dim keeps the copies."""
    items = list(index) if isinstance(index, tuple) else [index]
    if sum(1 for item in items if _advanced(item)) > 1:  # their result dims may move ahead
        raise UnsupportedOperationError(refusal, "it indexes with several tensors or lists")
    if Ellipsis in items:
        consumed = sum(1 for item in items if item is not None and item is not Ellipsis)
        at = items.index(Ellipsis)
        items[at : at + 1] = [slice(None)] * (x.dim() - consumed)
    position, source = 0, 0  # dims of the result made so far, dims of x consumed so far
    for item in items:
        if item is None:  # a new dim of size 1
            position += 1
            continue
        if source == axis:
            if isinstance(item, slice) and _keeps_every_row(item, x.shape[axis]):
                return position
            raise UnsupportedOperationError(refusal, "it selects or slices copies")
        if _advanced(item):
            raise UnsupportedOperationError(
                refusal, "it indexes a dimension before the copies with a tensor or list"
            )
        position += int(isinstance(item, slice))
        source += 1
    return position + axis - source  # the copy dim lies among the dims left whole


def _advanced(item: Any) -> bool:
    """Whether an index item is advanced (a tensor of values, a list, a mask)."""
    if isinstance(item, torch.Tensor):
        return item.dim() > 0 or item.dtype == torch.bool
    return isinstance(item, list | tuple)


def _through_reshape(
    x: torch.Tensor, axis: int, out: torch.Tensor, batch: int, refusal: str
) -> int:
    """The copy dim after a reshape: the dim of ``out`` after the same elements as before.

    Reshapes keep the row-major order, so the copies stay copy-major in the dim of ``out`` whose
    preceding dims hold as many elements as ``x``'s dims before ``axis``, if its size is a
    multiple of the batch (the copy dim merged with the next dims, or split after its copies).
    """
    before = math.prod(x.shape[:axis])
    for dim in range(out.dim()):
        if math.prod(out.shape[:dim]) == before and out.shape[dim] % batch == 0:
            return dim
        if math.prod(out.shape[: dim + 1]) > before:
            break
    raise UnsupportedOperationError(
        refusal,
        f"it reshapes {tuple(x.shape)} (copies along dim {axis}) to {tuple(out.shape)}, which "
        "mixes the copies with other values",
    )
