"""Errors raised by the CTC pass."""

from __future__ import annotations


class UnsupportedOperationError(RuntimeError):
    """The model called an operation the CTC rules do not know.

    CTC propagates every feature copy through the model with the gates of the original pass
    fixed. That is only defined for operations that are linear in the input, affine with a bias
    the rules can share, or a gate the rules know (ReLU-like activations, max-pooling switches,
    elementwise smooth activations as rescale gates). Anything else is refused by name instead
    of giving silently wrong numbers.
    """

    def __init__(self, operation: str, reason: str) -> None:
        self.operation = operation
        self.reason = reason
        super().__init__(
            f"CTC cannot propagate feature copies through {operation}: {reason}. "
            "Supported: convolutions, linear layers, BatchNorm in eval mode, ReLU/LeakyReLU, "
            "smooth elementwise activations (rescale gates), max/avg pooling, residual adds, "
            "concatenation, reshaping and dropout in eval mode. See the docs page "
            "'How CTC works' for the full list."
        )


class RetiredTensorError(RuntimeError):
    """The model read a tensor whose memory a BatchNorm of the pass had scaled in place.

    Raised inside the pass only; :class:`~ctc_plugin.ctc.attribution.CTC` then runs the pass
    again without in-place scaling, so users never see it.
    """

    def __init__(self, operation: str) -> None:
        self.operation = operation
        super().__init__(
            f"{operation} read a tensor that a BatchNorm of the CTC pass had scaled in place"
        )
