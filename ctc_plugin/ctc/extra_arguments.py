"""``additional_forward_args`` in a CTC pass: repeated for every copy, as Captum repeats them.

A pass runs the forward function on one copy of each example per feature; every tensor of the
extra arguments with one row per example (at any depth of tuples, lists and dicts) is repeated
once per copy (`repeat_extra`). A tensor that only by chance has as many rows as there are
examples (weights of as many classes) is repeated too and makes the model fail on sizes: torch's
error then gets a line saying what was repeated and what to do (`repeated_extra_note`), and so
does CTC's refusal of a tensor that differs between the copies (`repeated_extras_noted`). A tensor
of another number of rows is passed to every copy as it is (a constant, such as class weights);
where one was meant per example, CTC's refusal of a constant that does not fit the copies names
it (`other_rows_noted`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from ctc_plugin.ctc.errors import UnsupportedOperationError, UntracedOutputError
from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.inputs import holds_per_example, map_per_example


def repeat_extra(extra: tuple, n: int, copies: int) -> tuple:
    """The extra arguments of a pass of ``copies`` copies per example.

    Every tensor with one row per example (at any depth of tuples, lists and dicts) is repeated
    once per copy, as Captum repeats the top-level ones for its perturbed batches.
    """
    return map_per_example(extra, n, lambda tensor: tensor.repeat_interleave(copies, dim=0))


#: torch's messages for operands whose sizes do not match (what a repeated extra argument that
#: belongs to no example makes the model raise).
_SIZE_MISMATCH = re.compile(
    r"size of tensor|must match the size|shape .* is invalid|mat\d and mat\d"
)


def about_repeated_extras(error: RuntimeError, extra: tuple, n: int) -> bool:
    """Whether torch's ``error`` may come from extra arguments that the pass repeated per copy.

    Only torch's own error for sizes that do not match (not a subclass, not a dtype error) and
    only where ``extra`` holds a tensor with one row per example.
    """
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return (
        type(error) is RuntimeError
        and bool(_SIZE_MISMATCH.search(first))
        and holds_per_example(extra, n)
    )


def repeated_extras_noted(error: Exception, extra: tuple, layout: CopyLayout) -> Exception | None:
    """``error`` with `repeated_extra_note` where the repeated extra arguments may have caused it.

    That is torch's error for sizes that do not match (`about_repeated_extras`), and CTC's
    refusal of a tensor that differs between the copies of one example
    ([`UntracedOutputError`][ctc_plugin.ctc.errors.UntracedOutputError]) where ``extra`` holds
    a tensor with one row per example: an attention mask shared by every image, with as many
    rows as there are images, is repeated per copy and then differs between them. ``None``
    for any other error.
    """
    if isinstance(error, UntracedOutputError):
        if not holds_per_example(extra, layout.examples):
            return None
        return UntracedOutputError(f"{error.reason} {repeated_extra_note(layout)}", error.module)
    if isinstance(error, RuntimeError) and about_repeated_extras(error, extra, layout.examples):
        return RuntimeError(f"{error}\n{repeated_extra_note(layout)}")
    return None


def repeated_extra_note(layout: CopyLayout) -> str:
    """The line a CTC pass adds to torch's size error when it repeated extra arguments."""
    n = layout.examples
    return (
        f"(CTC ran the forward function on {layout.batch} copies, {layout.copies} per "
        f"example, and repeated every tensor of additional_forward_args whose first dimension "
        f"is the number of examples, {n}, once per copy, as Captum does for its perturbed "
        f"batches; a tensor with {n} rows that does not belong to the examples, such as "
        "weights of as many classes, is repeated too: give it a first dimension of 1 "
        "(w[None]), or bind it in the forward function instead of passing it)"
    )


def _tensor_shapes(value: object, open_: set[int]) -> list[tuple[int, ...]]:
    """The shapes of the tensors in ``value``, at any depth of tuples, lists and dicts."""
    import torch

    if isinstance(value, torch.Tensor):
        return [tuple(value.shape)]
    if not isinstance(value, (dict, list, tuple)) or id(value) in open_:
        return []
    open_.add(id(value))
    items = value.values() if isinstance(value, dict) else value
    shapes = [shape for item in items for shape in _tensor_shapes(item, open_)]
    open_.discard(id(value))
    return shapes


#: CTC's refusal of a constant operand, with the constant's first dimension.
_REFUSED_CONSTANT = re.compile(r"a constant of shape \((\d+)[,)]")


@contextmanager
def other_rows_noted(extra: tuple, n: int) -> Iterator[None]:
    """Add a note to CTC's refusal of a constant operand inside the block where it may be ours.

    That is where ``extra`` holds a tensor whose first dimension is neither the number of
    examples ``n`` nor 1, and is the refused constant's. CTC gives such a tensor to every copy
    as it is (a constant); one meant per example with a wrong number of rows then fails where
    it meets the copies, as a constant that does not broadcast, which reads as if the model
    were unsupported.
    """
    try:
        yield
    except UnsupportedOperationError as error:
        refused = _REFUSED_CONSTANT.match(error.reason)
        rows = int(refused.group(1)) if refused else None
        # a tensor whose rows the refused constant kept (what the model made of it)
        others = [s for s in _tensor_shapes(extra, set()) if s and s[0] not in (1, n)]
        others = [s for s in others if s[0] == rows]
        if not others:
            raise
        note = (
            f"; additional_forward_args holds a tensor of shape {others[0]}, whose first "
            f"dimension is not the number of examples, {n}: CTC gives it to every copy as it "
            "is (a constant); if it belongs to the examples, give it one row per example"
        )
        raise UnsupportedOperationError(
            error.operation, error.reason + note, error.module, at_output=error.at_output
        ) from error
