"""The per-operation CTC rules, shared by the Captum class and the Zennit composite.

A [`GatedPass`][ctc_plugin.ctc.rules.GatedPass] holds what one CTC pass needs: the
[`CopyLayout`][ctc_plugin.ctc.layout.CopyLayout] of the batch and the
[`BiasSharing`][ctc_plugin.ctc.sharing.BiasSharing] strategy. Its methods take and return *flat*
propagated tensors (N*C, ...) and implement one rule each. CTC's principle decides every rule:
*whatever the full input decided nonlinearly is a gate taken from the gate copy; everything else is
linear in the copies, and input-independent terms are biases shared among them.*

- [`GatedPass.affine`][ctc_plugin.ctc.rules.GatedPass.affine]: a bias-free result plus the bias
  shared among the copies (convolutions, linear layers, BatchNorm's shift, constants added to the
  signal);
- [`GatedPass.fold_batch_norm`][ctc_plugin.ctc.rules.GatedPass.fold_batch_norm]: BatchNorm after a
  biased layer, folded into it so the pair shares one bias;
- [`relu_gate`][ctc_plugin.ctc.gate_rules.GateRules.relu_gate],
  [`leaky_relu_gate`][ctc_plugin.ctc.gate_rules.GateRules.leaky_relu_gate]: the original pass's
  activation pattern applied to every copy;
- [`rescale_gate`][ctc_plugin.ctc.gate_rules.GateRules.rescale_gate]: smooth elementwise
  activations as the ratio ``y / x`` of the original pass (exact for the gate copy, zero where the
  original input is zero); where ``f(0) != 0`` (sigmoid, softplus), ``(y - f(0)) / x`` and the
  constant ``f(0)`` a shared bias;
- [`max_pool_switches`][ctc_plugin.ctc.gate_rules.GateRules.max_pool_switches],
  [`max_switches`][ctc_plugin.ctc.gate_rules.GateRules.max_switches]: every copy
  routed through the original argmax positions (of a pooling window, or over dims of one
  example);
- [`layer_norm`][ctc_plugin.ctc.norm_rules.NormalisationRules.layer_norm],
  [`group_norm`][ctc_plugin.ctc.norm_rules.NormalisationRules.group_norm],
  [`instance_norm`][ctc_plugin.ctc.norm_rules.NormalisationRules.instance_norm]: normalisation
  statistics as gates (each copy centred on its own mean, divided by the gate copy's standard
  deviation, scaled by the weight; the shift is a shared bias);
- [`gate_product`][ctc_plugin.ctc.gate_rules.GateRules.gate_product]: a product of the signal
  with a *gate tensor* (one that comes out of a squashing activation of the full pass, such as a
  squeeze-excitation scale): every copy of the signal times the gate copy's factor.

These methods are the readable specification: dense tensors, out of place (except where the
model's own operation is in place), nothing carried between layers but the copies. Speed-ups
plug in at [`ctc_plugin.ctc.speedups`][ctc_plugin.ctc.speedups], not here.

The gate copy (copy 0 of each example) always computes the model's value, so the gates of
every later layer come from the original forward pass. Every gate is held fixed (detached), so
when the pass runs with autograd (the ``"none"`` gradient path) its derivative is that of the
network linearised at its gates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

from ctc_plugin.batchnorm import batch_norm_affine
from ctc_plugin.ctc.errors import (
    GraphCutError,
    over_dim_zero,
    rows_differ_error,
)
from ctc_plugin.ctc.gate_rules import GateRules
from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.norm_rules import NormalisationRules
from ctc_plugin.ctc.sharing import BiasSharing, unexpanded

#: Attribute set on a propagated tensor that came out of a biased affine rule, holding
#: ``(bias_free, bias)`` so a following BatchNorm can fold itself into that layer.
FOLD_ATTRIBUTE = "_ctc_affine_parts"

#: Attribute set on a propagated tensor whose copies lie along another dim than 0 (its index).
AXIS_ATTRIBUTE = "_ctc_axis"

#: Attribute set on a propagated tensor that is a *gate tensor*, holding its
#: [`GateMark`][ctc_plugin.ctc.rules.GateMark].
GATE_ATTRIBUTE = "_ctc_gate"

#: Attribute set on a gate-only tensor that stands for a signal whose copies are computed when
#: needed, holding its [`DeferredSignal`][ctc_plugin.ctc.deferred.DeferredSignal].
DEFERRED_ATTRIBUTE = "_ctc_deferred"

#: Attribute set on a propagated tensor that the model may not read, holding why (the indices
#: ``x.max(1)`` returns beside its values): any operation on it is refused with that reason.
REFUSED_ATTRIBUTE = "_ctc_refused"

#: Attribute set on a tensor that a zeros factory made during a pass, outside the copies:
#: ``(pass token, version counter)`` when it was made (see `GatedPass.note_zeros`).
ZEROS_ATTRIBUTE = "_ctc_zeros"


def checks_host(host_checks: bool | None, values: torch.Tensor) -> bool:
    """Whether a rule or fused sharing may read ``values``' device back (``None``: on a CPU only).

    Each such read is a host synchronisation, which stalls a GPU's queue.
    """
    return values.device.type == "cpu" if host_checks is None else host_checks


@dataclass(frozen=True)
class GateMark:
    """Why a propagated tensor is a gate tensor: the full pass decided it nonlinearly.

    A gate tensor comes out of a squashing activation (sigmoid, hardsigmoid, tanh, softmax) or
    is computed from gate tensors and constants only. Multiplying the signal by it is a gate:
    every copy of the signal is multiplied by the gate copy's value
    ([`GatedPass.gate_product`][ctc_plugin.ctc.gate_rules.GateRules.gate_product]).

    Attributes:
        origin: The operation that made it a gate tensor (named in error messages).
        only: Only its gate copy means anything (a softmax, a product of gate tensors): its other
            rows are no copies of a signal, so it may serve as a gate and as nothing else, unless
            it stands for a product of two signals whose copies are computed when read as a
            signal ([`ctc_plugin.ctc.deferred`][ctc_plugin.ctc.deferred]).
        module: For a gate-only tensor, the module whose code ran ``origin`` (named where the
            model's output is refused), once [`CTCMode`][ctc_plugin.ctc.attribution.CTCMode]
            noted it; ``None`` before or where none ran it.
        through: For a gate-only tensor computed from ``origin``'s output by later operations
            (a convolution after ``nn.Softmax2d``), the last of them; ``None`` for ``origin``'s
            own output.
        power: A power of the signal (``x ** p``, ``x * x``) and its views: reduced (a mean, or a
            matrix product with ``1 / D``) it is a normalisation's statistic, so a matrix
            product does not read it as the signal, as it reads a sigmoid's output.
    """

    origin: str
    only: bool = False
    module: Any = field(default=None, compare=False)
    through: str | None = None
    power: bool = False


class BatchDimensionError(ValueError):
    """An operation's result lost the batch dimension that carries the copies."""


def grows_from(tensor: torch.Tensor, leaves: tuple[torch.Tensor, ...]) -> bool:
    """Whether ``tensor``'s autograd graph reaches one of ``leaves`` (tensors that need grad)."""
    wanted = {id(leaf) for leaf in leaves}
    if not wanted:
        return False
    seen: set[int] = set()
    stack = [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if id(getattr(node, "variable", None)) in wanted:
            return True
        stack.extend(parent for parent, _ in node.next_functions)
    return False


@dataclass
class GatedPass(GateRules, NormalisationRules):
    """State and rules of one CTC pass over a batch of copies.

    Attributes:
        layout: Where each copy sits in the batch.
        sharing: How biases are shared among the copies.
        token: An object identifying this pass; tensors it propagates are tagged with it.
        gradient: The pass runs with autograd and its gradient is the result (the ``"none"``
            fast path): an operation that cuts the gradient off the copies raises
            `GraphCutError` ([`left_torch`][ctc_plugin.ctc.rules.GatedPass.left_torch],
            [`check_gradient`][ctc_plugin.ctc.rules.GatedPass.check_gradient]).
        exits: The calls that took the copies' values out of torch (``numpy``, ``tolist``,
            ``item``, ...), in order; named when the output turns out not to be traced.
        tensor_steps: Recurrent layers run their steps as plain tensor operations
            ([`TensorSteps`][ctc_plugin.ctc.recurrent_steps.TensorSteps]) instead of one rule call
            per operation ([`Steps`][ctc_plugin.ctc.recurrent_steps.Steps], the spec's).
        host_checks: Whether a rule may read a value back from its device where a note could
            stand for it (`known_zeros`): ``None``, on a CPU only (see
            [`Speedups.host_checks`][ctc_plugin.ctc.speedups.Speedups]).
        gradient_inputs: In a gradient pass, the leaves its gradient is taken for: a constant
            operand computed from them where the pass did not see it raises `GraphCutError`
            (see [`check_constant`][ctc_plugin.ctc.rules.GatedPass.check_constant]).
    """

    layout: CopyLayout
    sharing: BiasSharing
    token: object = field(default_factory=object)
    gradient: bool = False
    exits: list[str] = field(default_factory=list)
    tensor_steps: bool = True
    host_checks: bool | None = None
    gradient_inputs: tuple[torch.Tensor, ...] = ()

    # ------------------------------------------------------------------ tagging
    def tag(self, tensor: torch.Tensor, axis: int = 0) -> torch.Tensor:
        """Mark a tensor as carrying copies of this pass along dim ``axis``; return it.

        The copies lie along dim 0 wherever a rule applies; a reshaping may move them to another dim
        for a while ([`ctc_plugin.ctc.copy_axis`][ctc_plugin.ctc.copy_axis]). That dim holds N*C
        rows, or N*C*m (copy-major: ``m`` rows per copy).
        """
        if tensor.dim() <= axis or tensor.shape[axis] % self.layout.batch != 0:
            raise BatchDimensionError(
                f"its result has shape {tuple(tensor.shape)} but must keep the batch of copies "
                f"(size {self.layout.batch}) as dimension {axis}; CTC needs models whose "
                "operations keep the batch dimension (a reshape may merge it with the next "
                "dimensions, as vision transformers' windows do)"
            )
        tensor._ctc_pass = self.token  # type: ignore[attr-defined]
        # Any operation producing this object (an in-place one too) ends a pending BatchNorm
        # fold, and its gate mark holds only where the operation's rule sets it.
        for attribute in (
            FOLD_ATTRIBUTE, GATE_ATTRIBUTE, AXIS_ATTRIBUTE, REFUSED_ATTRIBUTE, DEFERRED_ATTRIBUTE
        ):  # fmt: skip
            if hasattr(tensor, attribute):
                delattr(tensor, attribute)
        if axis:
            setattr(tensor, AXIS_ATTRIBUTE, axis)
        return tensor

    def note_zeros(self, value: Any) -> None:
        """Note that a tensor a zeros factory made during the pass holds zeros, as it is now.

        The note holds as long as the tensor's version counter (which every in-place write to it
        or a view of it moves on) has not changed: see `known_zeros`. Inference tensors, which
        keep no version counter, are not noted. Writes that autograd does not see either (through
        ``.data`` or a NumPy array on the same memory) do not move the counter: off a CPU, a
        model that fills its own zeros that way inside the forward pass is read wrongly.
        """
        if isinstance(value, torch.Tensor) and not value.is_inference():
            setattr(value, ZEROS_ATTRIBUTE, (self.token, value._version))

    def known_zeros(self, value: Any) -> bool:
        """Whether ``value`` is known to hold zeros without reading it (`note_zeros`).

        Only where reading it would wait for a device (``host_checks``): on a CPU the value is
        read, which also sees the writes the note cannot.
        """
        if not isinstance(value, torch.Tensor) or value.is_inference():
            return False
        if checks_host(self.host_checks, value):
            return False
        return getattr(value, ZEROS_ATTRIBUTE, None) == (self.token, value._version)

    def copy_axis(self, tensor: torch.Tensor) -> int:
        """The dim of a propagated tensor that holds the copies (0 unless a reshape moved it)."""
        return getattr(tensor, AXIS_ATTRIBUTE, 0)

    def is_propagated(self, value: Any) -> bool:
        """Whether ``value`` is a tensor carrying copies of this pass."""
        return isinstance(value, torch.Tensor) and getattr(value, "_ctc_pass", None) is self.token

    def gate_mark(self, value: Any) -> GateMark | None:
        """The `GateMark` of a propagated gate tensor, ``None`` for any other value."""
        if not self.is_propagated(value):
            return None
        return getattr(value, GATE_ATTRIBUTE, None)

    def mark_gate(
        self, tensor: torch.Tensor, origin: str, only: bool = False, power: bool = False
    ) -> torch.Tensor:
        """Record that a propagated tensor is a gate tensor (see `GateMark`); return it."""
        setattr(tensor, GATE_ATTRIBUTE, GateMark(origin=origin, only=only, power=power))
        return tensor

    def keep_mark(self, tensor: torch.Tensor, mark: GateMark | None) -> torch.Tensor:
        """Give ``tensor`` (which stands for the tensor that carried ``mark``) that mark."""
        if mark is not None:
            setattr(tensor, GATE_ATTRIBUTE, mark)
        return tensor

    def tag_like(self, result: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Tag ``result`` as holding ``source``'s copies, along its dim, with its gate mark.

        For a tensor that stands for ``source`` (a copy kept before an in-place call writes
        into ``source``, the copies an in-place call wrote back, heads repeated). Both are read
        before ``result`` is tagged, so ``result`` may be ``source`` itself.
        """
        axis, mark = self.copy_axis(source), self.gate_mark(source)
        self.tag(result, axis)
        return self.keep_mark(result, mark)

    # ------------------------------------------------------------------ provenance
    def left_torch(self, operation: str) -> None:
        """Record a call that takes the copies' values out of torch (``numpy``, ``item``, ...).

        Such values come back, if at all, as constants that no rule can follow; the call is
        named if the output turns out not to be traced. A gradient pass cannot follow them and
        raises `GraphCutError`.
        """
        self.exits.append(operation)
        if self.gradient:
            raise GraphCutError(operation)

    def check_gradient(
        self, operation: str, propagated: list[torch.Tensor], outputs: list[Any]
    ) -> None:
        """In a gradient pass, refuse an operation whose result lost the copies' gradient.

        ``.detach()``, ``torch.no_grad()`` inside the forward function, a conversion to an
        integer dtype: the gradient would miss what follows, and the scores with it. Gate-only
        tensors are held fixed on purpose and are not checked, nor are the indices ``max``
        returns (any use of them is refused).

        Raises:
            GraphCutError: A propagated input needs a gradient and a propagated result has none.
        """
        if not any(t.requires_grad for t in propagated):
            return
        for leaf in outputs:
            if not self.is_propagated(leaf) or leaf.requires_grad:
                continue
            if hasattr(leaf, REFUSED_ATTRIBUTE):  # max's indices: refused wherever they are read
                continue
            mark = self.gate_mark(leaf)
            if mark is None or not mark.only:
                raise GraphCutError(operation)

    def rows_alike(self, constant: torch.Tensor) -> bool:
        """Whether a constant with one row per copy holds the same rows for each example's copies.

        Exactly for integers and booleans (and infinities, NaNs), up to rounding for floating
        point: a learned query expanded to the batch and then projected comes out of a matrix
        product with its rows an ulp apart. Rounding is judged value by value, 100 ulps of the
        larger of the two values, with a floor of 100 ulps of the example's median magnitude
        (a value a sum cancelled to almost zero): one large value (a ``-1e9`` mask fill) or
        one example of large values loosens nothing else. An infinity is alike only to the
        same infinity (a ``-inf`` mask fill in one copy and a finite value in another differ:
        the bound of an infinite value would be infinite).
        """
        grouped = self.layout.group(constant.detach())
        first = grouped[:, :1]
        equal = grouped == first
        if not constant.is_floating_point() or constant.numel() == 0:
            return bool(equal.all())
        equal |= grouped.isnan() & first.isnan()
        ulps = 100 * torch.finfo(constant.dtype).eps
        finite = torch.where(torch.isfinite(first), first.abs(), float("nan"))
        typical = finite.flatten(1).nanmedian(dim=1).values.nan_to_num(0.0)
        floor = (ulps * typical).view(-1, *([1] * (grouped.dim() - 1)))
        bound = ulps * torch.maximum(grouped.abs(), first.abs()) + floor
        rounded = torch.isfinite(grouped) & torch.isfinite(first)  # infinities: equal or not
        return bool((equal | (rounded & ((grouped - first).abs() <= bound))).all())

    def check_constant(self, constant: Any, signal: torch.Tensor, operation: str) -> None:
        """Refuse a constant operand with one row per copy whose rows differ within an example.

        The constants a model meets hold the same rows for every copy of an example: CTC
        repeats per-example arguments for every copy, and what the model makes itself (an
        expanded class token, ``zeros_like``) does not depend on the copies. Rows that differ
        depend on the batch layout (a mask tiled to the model's own batch,
        ``mask.repeat(n // 2, 1)``, or a tensor built from the row index) or were computed from
        the copies by something the pass did not see (a numpy round trip of an activation); used
        as a bias or factor they would give each copy a value no rule accounts for. Checked only
        where the constant's dim 0 meets the signal's copies (same rank, same leading size); a
        constant expanded along dim 0 is accepted without reading.

        In a gradient pass (one copy per example: no rows to compare), a constant whose
        autograd graph reaches the pass's inputs was computed from them where the pass did not
        see it (TorchScript, a C++ extension): its gradient would be the model's, not the
        linearised network's, so the pass gives way to the pass of the copies.

        Raises:
            UntracedOutputError: The rows differ by more than rounding.
            GraphCutError: In a gradient pass, for a constant computed from its inputs.
        """
        if (
            self.gradient
            and isinstance(constant, torch.Tensor)
            and constant.grad_fn is not None
            and not self.is_propagated(constant)
            and grows_from(constant, self.gradient_inputs)
        ):
            raise GraphCutError(f"code the pass did not see, feeding {operation},")
        if (
            not isinstance(constant, torch.Tensor)
            or self.is_propagated(constant)
            or self.layout.copies == 1
            or not constant.is_floating_point()
            or constant.dim() != signal.dim()
            or constant.numel() == 0
            or constant.shape[0] != signal.shape[0]
            or constant.shape[0] % self.layout.batch
            or constant.stride(0) == 0
            or self.copy_axis(signal) != 0
        ):
            return
        if not self.rows_alike(constant):
            raise rows_differ_error(operation, self.exits)

    def close(self) -> None:
        """Let go of what the pass keeps for its rules once its output is read (nothing here)."""

    # ------------------------------------------------------------------ linear operations
    def linear(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """An operation linear in the signal, applied as it is to all copies at once.

        Its tensor results are tagged as carrying the copies (a faster pass may compute only
        where the copies are nonzero, see [`ctc_plugin.ctc.speedups`][ctc_plugin.ctc.speedups]).
        """
        out = func(*args, **kwargs)
        return tree_map(lambda t: self.tag(t) if isinstance(t, torch.Tensor) else t, out)

    # ------------------------------------------------------------------ affine rules
    def affine(
        self, bias_free: torch.Tensor, bias: torch.Tensor | None, foldable: bool = False
    ) -> torch.Tensor:
        """``bias_free`` plus the bias shared among the copies: ``z_k + s_k * b`` for copy ``k``.

        Args:
            bias_free: (N*C, *rest) result of the operation without its bias. It belongs to
                the rule: a sharing that works in place may write into it.
            bias: Bias broadcastable to ``rest`` (aligned to its trailing dims), or to the
                grouped (N, C, *rest) shape; ``None`` for no bias.
            foldable: Record the parts so a following BatchNorm can fold itself in.
        """
        if bias is None:
            return self.tag(bias_free)
        z = bias_free.clone() if foldable and self.sharing.in_place else bias_free
        grouped = self.layout.group(z)
        shared = self.sharing.add_bias(grouped, unexpanded(bias).to(z.dtype), self.layout)
        out = self.tag(z if shared is grouped else self.layout.ungroup(shared, z))
        if foldable and self.sharing.name != "none":
            setattr(out, FOLD_ATTRIBUTE, (bias_free, bias))
        return out

    def pending_fold(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The parts of the biased layer a BatchNorm after ``x`` would fold into, if any."""
        return getattr(x, FOLD_ATTRIBUTE, None)

    def carry_fold(
        self,
        pending: tuple[torch.Tensor, torch.Tensor] | None,
        source: torch.Tensor,
        result: torch.Tensor,
    ) -> None:
        """Let a BatchNorm after ``result`` fold into the layer ``source`` came from.

        For operations that copy or convert their input without moving a value (``clone``,
        ``contiguous``, ``.float()`` of float32), given ``source``'s `pending_fold` from before
        the operation (tagging its result, which may be ``source`` itself, ends the fold).
        Where ``result`` has ``source``'s shape, dtype and device it holds the same values at
        the same places, so the fold holds for it as well; before, `fold_batch_norm` shared
        the BatchNorm's shift as a bias of its own after such an operation.
        """
        if (
            pending is not None
            and result.shape == source.shape
            and result.dtype == source.dtype
            and result.device == source.device
        ):
            setattr(result, FOLD_ATTRIBUTE, pending)

    def fold_batch_norm(
        self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
    ) -> torch.Tensor:
        """Apply an eval-mode BatchNorm ``x * scale + shift`` (both aligned to ``x``'s rest).

        When ``x`` came from a biased layer, the BatchNorm is folded into it: the pair acts as
        one layer with weight ``scale * W`` and bias ``scale * b + shift``, sharing one bias.
        Otherwise ``x * scale`` is the bias-free part and ``shift`` the bias.
        """
        parts = getattr(x, FOLD_ATTRIBUTE, None)
        if parts is not None:
            bias_free, bias = parts
            return self.affine(bias_free * scale, bias * scale + shift)
        return self.affine(x * scale, shift)

    def running_norm(
        self,
        x: torch.Tensor,
        running_mean: torch.Tensor,
        running_var: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> torch.Tensor:
        """BatchNorm (or InstanceNorm) with running statistics, through `fold_batch_norm`.

        The affine map of [`batch_norm_affine`][ctc_plugin.batchnorm.batch_norm_affine], per channel
        (dim 1).
        """
        scale, shift = batch_norm_affine(running_mean, running_var, weight, bias, eps)
        shape = (-1, *([1] * (x.dim() - 2)))
        return self.fold_batch_norm(x, scale.view(shape), shift.view(shape))

    # ------------------------------------------------------------------ gate-only tensors
    def gate_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The gate copy's rows of a propagated tensor, detached: (N, ...) or (N*m, ...)."""
        grouped = self.layout.group(x)
        rows = grouped[:, 0]
        if grouped.dim() > x.dim() + 1:  # N*C*m rows: the gate copy's m rows of each example
            rows = rows.flatten(0, 1)
        return rows.detach()

    def full_pass_operand(self, value: Any, reference: torch.Tensor) -> Any:
        """An operand as the full pass computed with it: the model's own batch.

        The gate copy's rows of a propagated tensor, and of a constant with one row per copy
        (``torch.full((x.shape[0], ...))`` made from the pass's batch: equal rows for the copies
        of an example); any other value as it is, a parameter too, whatever its size (an
        ``nn.Linear`` with as many outputs as the pass has rows), and a constant whose rows
        differ between copies (a computed weight of that size). ``reference`` is a propagated
        operand of the same call.
        """
        if not isinstance(value, torch.Tensor) or isinstance(value, torch.nn.Parameter):
            return value
        if self.is_propagated(value):
            return self.gate_rows(value)
        rows = self.gate_rows(reference).shape[0]
        if value.dim() == reference.dim() > 0 and value.shape[0] == reference.shape[0] != rows:
            if self.rows_alike(value):
                return self.gate_rows(value)
        return value

    def of_full_pass(
        self, func: Callable[..., Any], args: tuple, kwargs: dict, origin: str
    ) -> torch.Tensor:
        """``func`` of the full pass's operands, given to every copy: a gate-only tensor.

        For what the full image decides and no copy can share: a comparison (``x > 0``), the
        sum of the signal and a statistic of it (``x + 0.044715 * x ** 3`` inside the tanh of
        a GELU written out). The result may only serve as a gate.
        """
        leaves = tree_flatten((args, kwargs))[0]
        reference = next(leaf for leaf in leaves if self.is_propagated(leaf))
        full_args, full_kwargs = tree_map(
            lambda value: self.full_pass_operand(value, reference), (args, kwargs)
        )
        out = self.call_on_full_pass(func, full_args, full_kwargs, reference, origin)
        return self.broadcast_gate(out, origin)

    def call_on_full_pass(
        self, func: Callable[..., Any], args: tuple, kwargs: dict, reference: Any, operation: str
    ) -> Any:
        """``func`` of operands taken from the full pass (`full_pass_operand`).

        A constant with one row per copy whose rows differ is left as it is there (it may be a
        weight with as many rows as the pass); if ``func`` then fails, such a constant was
        computed from the copies outside torch, and that is what is refused.

        Raises:
            UntracedOutputError: ``func`` failed with such a constant among its operands.
        """
        try:
            return func(*args, **kwargs)
        except RuntimeError as error:
            rows = reference.shape[0]
            untraced = any(
                isinstance(value, torch.Tensor)
                and not self.is_propagated(value)
                and value.dim() > 0
                and value.shape[0] == rows
                for value in tree_flatten((args, kwargs))[0]
            )
            if not untraced or rows == self.gate_rows(reference).shape[0]:
                raise
            raise rows_differ_error(operation, self.exits) from error

    def broadcast_gate(self, value: torch.Tensor, origin: str) -> torch.Tensor:
        """A gate-only tensor: ``value`` (the gate copy's rows) given to every copy.

        Its copies hold the full pass's value, so a linear operation of a gate-only tensor and
        the signal (``attention @ values``) applies the full pass's gate to every copy. Built
        in memory, not as a broadcast view: the model may reshape it or write into it.
        """
        examples, copies = self.layout.examples, self.layout.copies
        grouped = value.reshape(examples, 1, -1, *value.shape[1:])
        full = grouped.expand(examples, copies, *grouped.shape[2:]).reshape(-1, *value.shape[1:])
        # reshape returns a view of the expansion when it can (one example, one row each): its
        # rows would share memory, which a later view or an in-place write cannot take
        full = full.contiguous() if full.stride(0) == 0 and full.shape[0] > 1 else full
        return self.mark_gate(self.tag(full), origin, only=True)

    def full_pass_gate(
        self, x: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor], origin: str
    ) -> torch.Tensor:
        """A gate-only tensor: ``compute`` of the gate copy's rows, given to every copy.

        For operations whose outputs are no linear copies of anything (a softmax of attention
        scores, the product of queries and keys): the result may only serve as a gate.
        """
        return self.broadcast_gate(compute(self.gate_rows(x)), origin)

    def statistic(
        self, x: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor], origin: str
    ) -> torch.Tensor:
        """A nonlinear statistic of the signal (its square, variance, norm): a gate-only tensor.

        Normalisations written out by hand (ConvNeXt's ``(x - u).pow(2).mean(1)``, LLaMA's
        ``x.pow(2).mean(-1)``, ``x.var(-1)``, GRN's ``torch.norm(x, dim=(1, 2))``) compute a
        statistic of the signal and divide or multiply the signal by a function of it. As
        ``nn.LayerNorm``'s statistics, it is the full image's: ``compute`` runs on the gate
        copy's rows and its result is given to every copy, so the operations on it alone
        (``+ eps``, ``sqrt``, ``rsqrt``, a mean) stay gate-only and the division or product is
        a [`gate_product`][ctc_plugin.ctc.gate_rules.GateRules.gate_product]: summed over a
        partition's copies, the result is the model's. Used any other way it is refused.

        Raises:
            UnsupportedOperationError: The statistic does not keep the batch dimension (it
                reduces over dim 0, the examples and their copies).
        """
        rows = self.gate_rows(x)
        value = compute(rows)
        if value.dim() == 0 or value.shape[0] != rows.shape[0]:
            raise over_dim_zero(
                origin,
                f"it reduces {tuple(rows.shape)} to {tuple(value.shape)}",
                "dim=1 or dim=(1, 2), keepdim=True, as a normalisation does",
            )
        return self.broadcast_gate(value, origin)
