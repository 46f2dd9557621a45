"""Errors raised by the CTC pass."""

from __future__ import annotations

from typing import Any


class UnsupportedOperationError(RuntimeError):
    """The model called an operation the CTC rules do not know.

    CTC propagates every feature copy through the model with the gates of the original pass fixed.
    That is only defined for operations that are linear in the input, affine with a bias the rules
    can share, or a gate the rules know (ReLU-like activations, max-pooling switches, normalisation
    statistics, elementwise smooth activations as rescale gates, products with the output of a
    squashing activation). Anything else is refused by name, with the module that called it, instead
    of giving silently wrong numbers. The list of what is supported comes from the operation -> rule
    table ([`ctc_plugin.ctc.operation_table`][ctc_plugin.ctc.operation_table]).

    Attributes:
        operation: The torch function.
        reason: Why CTC cannot propagate copies through it.
        module: ``"path (Type)"`` of the module that called it, when known.
        headline: The message's first sentence: the operation, where, and why (without the
            list of what is supported that follows).
        at_output: Whether the refused tensor is the model's output itself (a gate tensor such
            as a final softmax), rather than an operation inside the model.
    """

    def __init__(
        self, operation: str, reason: str, module: str | None = None, *, at_output: bool = False
    ) -> None:
        from ctc_plugin.ctc.operation_table import (
            supported_summary,
        )  # the table imports this module

        self.operation = operation
        self.reason = reason
        self.module = module
        self.at_output = at_output
        where = f" in {module}" if module else ""
        self.headline = f"CTC cannot propagate feature copies through {operation}{where}: {reason}"
        super().__init__(
            f"{self.headline}. Supported: {supported_summary()}. See the docs page 'How CTC "
            "works' for the full table; an elementwise activation that computes what one of "
            "them computes takes its rule with "
            "ctc_plugin.ctc.operations.register_rule(function, like=...)."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by the constructor's arguments and the attributes set since (notes included)."""
        return (
            _rebuild_unsupported,
            (self.operation, self.reason, self.module, self.at_output),
            vars(self),
        )

    def in_module(self, module: str | None) -> UnsupportedOperationError:
        """The same error, saying which module called the operation."""
        return UnsupportedOperationError(
            self.operation, self.reason, module, at_output=self.at_output
        )


def _rebuild_unsupported(
    operation: str, reason: str, module: str | None, at_output: bool
) -> UnsupportedOperationError:
    """An unpickled `UnsupportedOperationError` (its keyword-only argument needs a function)."""
    return UnsupportedOperationError(operation, reason, module, at_output=at_output)


def constant_shape_error(
    operation: str, constant: tuple[int, ...], copies: tuple[int, ...], batch: int | None = None
) -> UnsupportedOperationError:
    """The error for a constant operand that does not broadcast per example to the copies.

    A constant with more dimensions than the copies most often means that the inputs were one
    example without its batch dimension: the message then says how to add it. One with as many
    and not of size 1 along the copies most often means that too (a per-channel ``(C, 1, 1)``
    normalisation meeting ``(copies, H, W)``), else that it was sized for the model's own batch
    (a batch size fixed beforehand): the pass stacks every example's copies along dim 0, so the
    message says how to make such a constant fit them. Where the copies hold ``m > 1`` rows per
    copy (``batch``, the pass's batch, given: the heads merged into the batch) and the
    constant's rows are a multiple of ``m``, it is most likely a per-head bias repeated a fixed
    number of times (``bias.repeat(batch, 1, 1)``), and the message opens with that advice.
    """
    hint = ""
    if len(constant) > len(copies):
        hint = (
            f" (the copies, of shape {copies}, have fewer dimensions: if the inputs are one "
            "example without its batch dimension, add it: x.unsqueeze(0))"
        )
    elif len(constant) == len(copies) and constant and constant[0] != 1:
        meets = (
            f" (it meets the copies, of shape {copies}, along their first dimension, where CTC "
            "stacks the copies of every example"
        )
        unbatched = (
            "if the inputs are one example without its batch dimension, add it: x.unsqueeze(0)"
        )
        rows = _rows_per_copy(copies[0], batch)
        if rows > 1 and constant[0] % rows == 0:
            hint = (
                f"{meets}, {rows} rows per copy: a constant sized for the model's own batch "
                "does not fit them. Keep it broadcastable instead, of size 1 along dim 0 (a "
                "per-head bias of shape (1, heads, L, L), or (heads, L, L) added after "
                "reshaping the signal to (B, heads, L, L)), or read the batch size from the "
                "tensors of the pass (bias.repeat(x.shape[0], 1, 1), x the block's input, not a "
                f"number fixed beforehand); {unbatched})"
            )
        else:
            hint = (
                f"{meets}: {unbatched}. Otherwise it was sized for the model's own batch, "
                "which does not fit the copies: keep it of size 1 along dim 0, or read the "
                "batch size from the tensors of the pass (x.shape[0], not a number fixed "
                "beforehand))"
            )
    return UnsupportedOperationError(
        operation, f"a constant of shape {constant} that does not broadcast per example{hint}"
    )


def _rows_per_copy(rows: int, batch: int | None) -> int:
    """How many rows of a propagated tensor with ``rows`` rows each copy holds (1 if unknown)."""
    if not batch or rows % batch:
        return 1
    return rows // batch


def copies_off_dim_zero(operation: str, axis: int) -> UnsupportedOperationError:
    """The error for a rule asked to run while a shape operation holds the copies off dim 0."""
    return UnsupportedOperationError(
        operation,
        f"its input holds the copies along dim {axis}, where a shape operation (a permute, "
        "transpose or stack) moved them; CTC applies this rule with the copies along dim 0 "
        "(shape operations may move them and back, a mean or sum may reduce other dims, and "
        "elementwise rules, linear and layer_norm may act on the dims after the copies)",
    )


def examples_combined(operation: str, axes: list[int]) -> UnsupportedOperationError:
    """The error for an operation whose operands hold the batch along different ``axes``.

    Dim 0 of each propagated tensor holds the examples and their feature copies; where a
    shape operation moved it in one operand and not in the other (``q @ k.transpose(-1, -2)``
    of (B, N) tensors), the operation pairs every example with every other.
    """
    dims = " and ".join(str(axis) for axis in sorted(set(axes)))
    return UnsupportedOperationError(
        operation,
        f"its operands hold the examples of the batch (and their feature copies) along "
        f"different dims ({dims}): it combines each example with the other examples (a "
        "(B, N) @ (N, B) matrix product is (B, B)), so an example's output would depend on "
        "the rest of the batch, and CTC explains each example on its own. Where the model "
        "means to mix its examples, explain it with a method that takes any model (feature "
        "ablation, LIME); where it does not, keep the batch dim first in every operand "
        "(q.unsqueeze(-1) @ k.unsqueeze(-2) for a (B, N, N) product)",
    )


def over_dim_zero(operation: str, what: str, example: str) -> UnsupportedOperationError:
    """The error for a maximum, mean or statistic asked to run over dim 0 (``what`` does it).

    Dim 0 holds the examples and their feature copies: a reduction over it would mix them.
    ``example`` shows the dims of one example to give instead.
    """
    return UnsupportedOperationError(
        operation,
        f"{what} over dim 0, which holds the examples and their feature copies; give the dims "
        f"of one example ({example})",
    )


class CompositeOutsideAttributorError(RuntimeError):
    """A gradient ran through a model carrying [`CTCComposite`][ctc_plugin.CTCComposite].

    Zennit's gradient attributors (``zennit.attribution.Gradient``, ``SmoothGrad``,
    ``IntegratedGradients``) and the manual idiom ``with composite.context(model): ...
    output.backward(...)`` compute a modified gradient. CTC is not a modified gradient: its
    scores come from a forward pass of one scaled copy of the input per feature, which only
    [`CTCAttributor`][ctc_plugin.CTCAttributor] (or the Captum class
    [`CTC`][ctc_plugin.CTC]) sets up. The composite's rules leave the
    gradient untouched, so these idioms would return the plain gradient; the first CTC rule the
    backward pass reaches raises this error instead.

    Attributes:
        module: The type name of the module whose CTC rule the gradient reached.
    """

    def __init__(self, module: str) -> None:
        self.module = module
        super().__init__(
            f"a gradient ran through {module}, which carries a CTCComposite rule: CTC is not a "
            "modified gradient, so zennit.attribution.Gradient, SmoothGrad or "
            "IntegratedGradients with CTCComposite (or output.backward() inside "
            "composite.context(model)) would return the plain gradient. Use "
            "ctc_plugin.CTCAttributor(model, composite, feature_mask=...) — "
            "`output, relevance = attributor(x, attr_output)` — or ctc_plugin.CTC(model)"
            ".attribute(x, target, feature_mask=...). A gradient method meant for the plain "
            "model (the relevance of distribute_within_features, say) runs after the composite "
            "is removed: outside the `with CTCAttributor(...)` block"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by the constructor's argument and the attributes set since (notes included)."""
        return (type(self), (self.module,), vars(self))


class UntracedOutputError(ValueError):
    """The forward function's output was not computed from the feature copies CTC gave it.

    CTC calls the forward function once on a batch holding one copy of the input per feature
    (plus the gate copy) and follows every torch operation on those copies, applying its rules;
    each copy's output is that feature's score. An output that did not come out of those
    operations holds no feature's contribution, and the scores would not add up to the output.
    This happens when the forward function

    - takes the values out of torch and back: a numpy round trip (``torch.from_numpy(
      t.numpy())``), ``torch.tensor(t.tolist())``, ``.item()`` or Python floats;
    - ignores its argument: returns a constant or an output computed before the call, runs the
      model on ``torch.zeros_like(x)`` or on a tensor captured from outside (a clone of the
      input);
    - runs code whose operations CTC cannot see (a TorchScript model).

    The same holds inside the model: a tensor that differs between the copies of one example
    but was not computed from them by traced operations (an activation taken through numpy and
    back, then added to or multiplied with the signal) is refused where it meets the signal, as
    is one that depends on the batch layout (a mask the model tiles to its own batch, or builds
    from the row index).

    Attributes:
        reason: What was wrong, in words.
        module: ``"path (Type)"`` of the module where it was found, when known.
    """

    def __init__(self, reason: str, module: str | None = None) -> None:
        self.reason = reason
        self.module = module
        where = f" (in {module})" if module else ""
        super().__init__(
            f"{reason}{where}. CTC runs the forward function (the model, or Captum's "
            "forward_func) once on a batch of feature copies of the input and reads each copy's "
            "output by following the torch operations on them, so it must compute its output "
            "from its argument with torch operations: no numpy, .tolist(), .item() or "
            "torch.tensor(...) round trips, no tensors captured from outside, no TorchScript. "
            "Return model(x), or a torch function of it such as "
            "model(x)[:, :10], and convert the attributions afterwards"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by the constructor's arguments and the attributes set since (notes included)."""
        return (type(self), (self.reason, self.module), vars(self))

    def in_module(self, module: str | None) -> UntracedOutputError:
        """The same error, saying in which module it was found."""
        return UntracedOutputError(self.reason, module)


def rows_differ_error(operation: str, exits: list[str]) -> UntracedOutputError:
    """The error for a constant whose rows differ between the copies of one example.

    CTC stacks the copies of every example along dim 0, so a constant built from the batch
    size or the row index (``mask.repeat(n // 2, 1)`` tiling the model's own batch,
    ``torch.arange(x.shape[0])``) gives the copies of one example different rows, as one
    whose values were taken out of torch and back does. ``exits`` are the calls that took the
    copies' values out of torch in this pass (``GatedPass.exits``): where there are such,
    the round trip is named first.
    """
    layout = (
        "it depends on the batch layout, built from the batch size or the row index "
        "(mask.repeat(n // 2, 1), torch.arange(x.shape[0])), where CTC stacks the copies of "
        "every example along dim 0"
    )
    round_trip = (
        f"{exits[0]} took the copies' values out of torch and back"
        if exits
        else "it was taken out of torch and back (an activation through numpy)"
    )
    first, second = (round_trip, layout) if exits else (layout, round_trip)
    return UntracedOutputError(
        "the forward function's output was not computed from the feature copies it was given "
        f"alone: {operation} combines them with a tensor that differs between the copies of "
        f"one example (its rows for them are not the same): {first}, or {second}. Build it "
        "from one example's shape and keep it broadcastable along dim 0 (of size 1 there, or "
        "with fewer dims), or compute it from the copies with torch operations"
    )


class GraphCutError(RuntimeError):
    """The gradient of a ``"none"`` pass could not follow the forward function.

    Raised inside that pass only (``.detach()``, ``torch.no_grad()``, ``.numpy()`` or
    ``.item()`` on the copies, a block under ``torch.utils.checkpoint``, which would compute
    its forward again outside the pass); [`CTC`][ctc_plugin.CTC] then computes the same
    scores with the forward pass of the copies, so users never see it.
    """

    def __init__(self, operation: str) -> None:
        self.operation = operation
        super().__init__(f"{operation} cut the gradient of the CTC pass")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by the constructor's argument and the attributes set since (notes included)."""
        return (type(self), (self.operation,), vars(self))
