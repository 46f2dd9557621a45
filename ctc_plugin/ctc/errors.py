"""Errors raised by the CTC pass."""

from __future__ import annotations


class UnsupportedOperationError(RuntimeError):
    """The model called an operation the CTC rules do not know.

    CTC propagates every feature copy through the model with the gates of the original pass fixed.
    That is only defined for operations that are linear in the input, affine with a bias the rules
    can share, or a gate the rules know (ReLU-like activations, max-pooling switches, normalisation
    statistics, elementwise smooth activations as rescale gates, products with the output of a
    squashing activation). Anything else is refused by name, with the module that called it, instead
    of giving silently wrong numbers. The list of what is supported comes from the operation -> rule
    table ([`ctc_plugin.ctc.operations`][ctc_plugin.ctc.operations]).

    Attributes:
        operation: The torch function.
        reason: Why CTC cannot propagate copies through it.
        module: ``"path (Type)"`` of the module that called it, when known.
    """

    def __init__(self, operation: str, reason: str, module: str | None = None) -> None:
        from ctc_plugin.ctc.operations import supported_summary  # the table imports this module

        self.operation = operation
        self.reason = reason
        self.module = module
        where = f" in {module}" if module else ""
        super().__init__(
            f"CTC cannot propagate feature copies through {operation}{where}: {reason}. "
            f"Supported: {supported_summary()}. See the docs page 'How CTC works' for the "
            "full table."
        )

    def in_module(self, module: str | None) -> UnsupportedOperationError:
        """The same error, saying which module called the operation."""
        return UnsupportedOperationError(self.operation, self.reason, module)


class RetiredTensorError(RuntimeError):
    """The model read a tensor whose memory a BatchNorm of the pass had scaled in place.

    Raised inside the pass only; [`CTC`][ctc_plugin.CTC] then runs the pass
    again without in-place scaling, so users never see it.
    """

    def __init__(self, operation: str) -> None:
        self.operation = operation
        super().__init__(
            f"{operation} read a tensor that a BatchNorm of the CTC pass had scaled in place"
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
            ".attribute(x, target, feature_mask=...)"
        )
