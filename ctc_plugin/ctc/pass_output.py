"""What a CTC pass gives back, checked: per-copy outputs, and scores that are finite.

`check_pass_output` takes the forward function's output of a pass over the feature copies and
refuses what holds no feature's contribution (an output computed outside the traced operations,
or a gate tensor of the full pass such as a final softmax), saying what to change;
`check_finite_scores` refuses scores a narrow float format lost. [`CTC`][ctc_plugin.CTC] and
[`CTCAttributor`][ctc_plugin.CTCAttributor] both run them.
"""

from __future__ import annotations

from typing import Any

import torch

from ctc_plugin.ctc.deferred import materialise
from ctc_plugin.ctc.errors import UnsupportedOperationError, UntracedOutputError
from ctc_plugin.ctc.rules import GatedPass
from ctc_plugin.targets import check_finite_target_outputs, output_not_a_tensor


def check_finite_scores(scores: torch.Tensor, output: torch.Tensor) -> None:
    """Refuse scores that are NaN or infinite where the model's target output is finite.

    Finite inputs (checked) and a finite output leave no reason for such a score but the
    arithmetic of the pass in a narrow format (a float16 share out of its range), so it is
    raised rather than returned.

    A target output that is itself NaN or infinite is refused first
    ([`check_finite_target_outputs`][ctc_plugin.targets.check_finite_target_outputs]), as
    Integrative CAM refuses it.

    Raises:
        ValueError: For target outputs that are not finite.
        FloatingPointError: Naming the examples, with what to do.
    """
    finite_output = torch.isfinite(output.detach())
    bad = ~torch.isfinite(scores.detach()).all(dim=1) & finite_output
    if not bool((bad | ~finite_output).any()):  # one host sync where all is well
        return
    check_finite_target_outputs(output)
    if bool(bad.any()):
        examples = bad.nonzero().flatten().tolist()
        raise FloatingPointError(
            f"CTC's scores of examples {examples[:10]} are NaN or infinite while the model's "
            f"target outputs are finite ({scores.dtype}): the pass left the format's range. "
            "Explain a float32 copy of the model and inputs (model.float(), x.float()), or use "
            "bfloat16"
        )


def check_pass_output(gated: GatedPass, logits: Any, model: Any = None) -> torch.Tensor:
    """A pass's output as per-copy values; refused (with what to change) where it is none.

    The output must have come out of the operations the pass followed on the copies (it carries
    the pass's tag): otherwise it was computed outside torch, from something else than the
    copies, or by code the pass could not see, and holds no feature's contribution. An output
    that is a product of two signals with its copies deferred (bilinear pooling, see
    [`ctc_plugin.ctc.deferred`][ctc_plugin.ctc.deferred]) gets them computed now.

    Returns:
        The output, its copies computed where they were deferred.

    Raises:
        ValueError: No tensor, or the batch dimension is not first.
        UntracedOutputError: The output was not computed from the copies.
        UnsupportedOperationError: The output is a gate tensor of the full pass (a softmax).
    """
    if not isinstance(logits, torch.Tensor):
        raise output_not_a_tensor(logits)
    if not gated.is_propagated(logits):
        raise UntracedOutputError(_untraced_reason(gated, logits))
    axis = gated.copy_axis(logits)
    if axis or logits.shape[0] != gated.layout.batch:
        where = f" (the copies along dim {axis})" if axis else ""
        raise ValueError(
            f"forward_func returned {tuple(logits.shape)}{where} for a batch of "
            f"{gated.layout.batch}; its output must keep the batch dimension first"
        )
    logits = materialise(logits)
    mark = gated.gate_mark(logits)
    if mark is not None and mark.only:
        from ctc_plugin.ctc.interception import module_name  # it imports the rules here

        raise UnsupportedOperationError(
            mark.origin,
            _gate_only_output(mark.origin, mark.through),
            module_name(model, mark.module),
            at_output=mark.through is None,
        )
    return logits


def _gate_only_output(origin: str, through: str | None) -> str:
    """Why an output that is a gate-only tensor made by ``origin`` is refused, and what to do.

    ``through``: the last operation between ``origin``'s output and the model's, ``None``
    where the output is ``origin``'s own.
    """
    kinds = (
        "a gate tensor computed for the full image only (a softmax, a product of two gate "
        "tensors such as tanh(h) * tanh(h), a square, variance or norm of the signal, a "
        "comparison, or the signal plus one of these), so every copy holds the full image's "
        "value, not the feature's contribution; such a tensor may only multiply or divide the "
        "signal, or be the condition of torch.where"
    )
    if through is not None:
        return (
            f"the model's output is computed from its output (last through {through}), {kinds}; "
            "it is not linear in the input, and here the layers after it read it as their "
            "input: CTC cannot explain this model as it is; explain it with a method that takes "
            "any model (feature ablation, LIME), or a model in which it only scales the signal "
            "(as a gate)"
        )
    reason = f"the model's output comes out of it, {kinds}"
    if origin.endswith("softmax"):
        return (
            f"{reason}: explain the logits before the softmax (for example with a forward "
            "function that leaves the softmax out)"
        )
    return (
        f"{reason}: it is not linear in the input, so explain the output of the layer "
        "before it, or a model in which it only scales the signal (as a gate)"
    )


def _untraced_reason(gated: GatedPass, logits: torch.Tensor) -> str:
    """Why a pass's output that carries no tag of the pass was not traced, in words."""
    batch = gated.layout.batch
    rows = logits.shape[0] if logits.dim() else 0
    if gated.exits:
        return (
            "the forward function's output was not computed from the feature copies it was given: "
            f"{gated.exits[0]} took their values out of torch and the output was rebuilt "
            "from them"
        )
    if rows != batch:
        return (
            f"the forward function's output has {rows} row{'s' * (rows != 1)} where the batch of "
            f"feature copies it was given has {batch}: it was not computed from its argument "
            "(an output computed before the call, or from a tensor captured in a closure such "
            "as a clone of the input)"
        )
    return (
        f"the forward function's output (shape {tuple(logits.shape)}) was not computed from "
        "the feature copies it was given: it ignores its argument (a constant, "
        "model(torch.zeros_like(x))), uses a tensor captured from outside, runs code CTC "
        "cannot see (TorchScript), or runs the model in another thread (a thread pool or a "
        "serving wrapper: CTC follows the operations of the thread that calls attribute, so "
        "call the model in that thread)"
    )
