"""Run any forward function as a CTC pass by intercepting the torch functions it calls.

Module hooks miss the functional calls that torchvision's DenseNet and Inception make (``F.relu``
inside ``forward``); a `TorchFunctionMode` sees every call.
[`CTCMode`][ctc_plugin.ctc.attribution.CTCMode] routes each call whose arguments carry copies of the
pass to the matching rule of [`GatedPass`][ctc_plugin.ctc.rules.GatedPass]:

- affine operations with a bias (convolutions, ``linear``, ``batch_norm`` in eval mode, a
  constant added to or subtracted from the signal): the bias-free result plus shared bias;
- gates: ReLU and LeakyReLU patterns, smooth activations as rescale gates, max-pool switches;
- operations linear in the signal (pooling by averaging, reshaping, concatenation, sums of
  propagated tensors, products with constants, dropout in eval mode, ...): applied as they are.

Calls whose arguments carry no copies run untouched. Anything else that would return a propagated
tensor raises [`UnsupportedOperationError`][ctc_plugin.UnsupportedOperationError] naming it. Calls
that take the copies' values out of torch (``numpy``, ``tolist``, ``item``) are recorded, to be
named should the output not be traced
([`check_pass_output`][ctc_plugin.ctc.pass_output.check_pass_output]).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from types import FrameType
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import BackwardCFunction
from torch.nn.modules import module as module_hooks_registry
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten
from torch.utils.hooks import RemovableHandle

from ctc_plugin.concurrency import inert_here
from ctc_plugin.ctc.calls import operation_name
from ctc_plugin.ctc.copy_axis import REDUCTIONS
from ctc_plugin.ctc.deferred import (
    MAX_DEPTH,
    Replay,
    Slot,
    defer,
    deferral,
    ended,
    materialised,
    slots,
    slotted,
    writes_first,
)
from ctc_plugin.ctc.errors import (
    GraphCutError,
    UnsupportedOperationError,
    UntracedOutputError,
    copies_off_dim_zero,
    examples_combined,
)
from ctc_plugin.ctc.handlers import computed_indices_reason, is_index_tensor
from ctc_plugin.ctc.operation_table import (
    EXIT_FUNCTIONS,
    MODEL_BATCH_QUERIES,
    SUMS,
    TEMPLATE_FUNCTIONS,
    ZERO_FACTORIES,
    OperationRule,
)
from ctc_plugin.ctc.operations import rule_for
from ctc_plugin.ctc.rules import REFUSED_ATTRIBUTE, BatchDimensionError, GatedPass
from ctc_plugin.inputs import (
    RANDOM_FUNCTIONS,
    changes_in_training,
    is_quantized,
    quantized_module_error,
    training_mode_error,
)
from ctc_plugin.module_paths import module_path
from ctc_plugin.module_state import compiled_code_stance, eager_switch
from ctc_plugin.wording import with_article

#: What `CTCMode._gate_only_reading` returns where a rule refuses gate-only operands.
REFUSED = object()

#: Reductions of a gate-only tensor over the batch that are the model's own checks of it
#: (``assert (x >= 0).all()``, ``if (x < 0).any(): raise ...``): the full pass's value, kept
#: as a constant of the pass whatever dims they keep.
BATCH_CHECKS = frozenset({torch.all, torch.any, torch.Tensor.all, torch.Tensor.any})

__all__ = [
    "CTCMode",
    "RefusalsNamed",
    "decomposed",
    "module_name",
    "named_in",
    "own_backward",
    "running_module",
    "running_module_object",
]


def own_backward(func: Callable[..., Any] | None, tensors: Sequence[Tensor]) -> str | None:
    """What in a forward function sets a gradient of its own, or ``None``.

    A custom ``autograd.Function`` (gradient reversal, a straight-through estimator) whose
    result is among ``tensors``, or ``func`` being ``Tensor.register_hook``: either changes the
    gradient without changing a forward value, so the gradient of the ``"none"`` pass would no
    longer be the linearised network's (`GraphCutError` sends that pass to the copies). A hook
    put on autograd's node itself (``h.grad_fn.register_hook``) is not seen: torch shows no
    node's hooks.
    """
    if func is Tensor.register_hook:
        return "a hook on a tensor (Tensor.register_hook)"
    for tensor in tensors:
        if isinstance(tensor.grad_fn, BackwardCFunction):
            name = type(tensor.grad_fn).__name__.removesuffix("Backward")
            return f"the autograd.Function {name}, whose backward is its own,"
    return None


def module_hooks(module: nn.Module) -> bool:
    """Whether ``module`` carries forward or backward hooks of its own (not global ones).

    Hooks of another call of this package (`inert_here`: they act on their own call's passes
    only, in another thread) do not count.
    """
    return _live_hooks(
        module._forward_pre_hooks,
        module._forward_hooks,
        module._backward_pre_hooks,
        module._backward_hooks,
    )


#: The ids of the global module pre-hooks that `CTCMode`s hold now (in every thread): each acts
#: on its own thread's calls only and changes no gradient.
_PASS_HOOKS: set[int] = set()


def other_global_module_hooks() -> bool:
    """Whether a global module hook (``register_module_*_hook``) other than a pass's is there.

    Hooks of another call of this package that act on that call only (`inert_here`, such as
    Integrative CAM's in another thread) do not count.
    """
    registry = module_hooks_registry
    return _live_hooks(
        registry._global_forward_pre_hooks,
        registry._global_forward_hooks,
        registry._global_backward_pre_hooks,
        registry._global_backward_hooks,
    )


def _live_hooks(*hook_dicts: dict[int, Any]) -> bool:
    """Whether the hook dicts hold a hook that may act here: not a pass's, not `inert_here`.

    Hook ids are unique across all dicts (one counter), so a pass's id is skipped in any.
    """
    if not any(hook_dicts):  # the common case, and nothing to iterate
        return False
    return any(  # a snapshot of each dict (atomic in C): other threads add and remove hooks
        key not in _PASS_HOOKS and not inert_here(hook)
        for hooks in hook_dicts
        for key, hook in tuple(hooks.items())
    )


#: What to do instead of an operation without a row, by the end of its name.
_NO_RULE_ADVICE = {
    "log_softmax": "a log-softmax of the logits is no contribution of the features; explain the "
    "logits before it (for example with a forward function that leaves it out)",
    "lp_pool1d": "a power mean over windows ((sum of x ** p) ** (1 / p)), whose parts do not add "
    "up to it; use max pooling or average pooling instead, or a method that takes any model "
    "(feature ablation, LIME)",
    "local_response_norm": "each value divided by a power of the sum of squares of its "
    "neighbouring channels; use a normalisation CTC supports instead (BatchNorm, GroupNorm, "
    "LayerNorm), or a method that takes any model (feature ablation, LIME)",
}
_NO_RULE_ADVICE["lp_pool2d"] = _NO_RULE_ADVICE["lp_pool3d"] = _NO_RULE_ADVICE["lp_pool1d"]


def _no_rule_reason(func: Callable[..., Any]) -> str:
    """Why ``func`` is refused (it has no row), with advice where the operation is a known one."""
    name = operation_name(func)
    advice = next((text for end, text in _NO_RULE_ADVICE.items() if name.endswith(end)), None)
    return "no CTC rule is defined for it" + (f": {advice}" if advice else "")


def _other_hooks(now: Any, outer: Any) -> bool:
    """Whether the saved-tensor hooks ``now`` are others than those on when the pass began."""
    return now is not None and (outer is None or now[0] is not outer[0])


def saved_tensor_hooks() -> Any:
    """The innermost saved-tensor hooks on now (``None`` without): a checkpoint's, or a user's.

    A gradient pass cannot go through hooks pushed inside the forward function: a checkpointed
    block computes its forward again during the backward, after the pass has ended, with the
    model's own gates (its gradient would not be the linearised network's, or its saved tensors
    would not match). Hooks that were on before the pass began (``save_on_cpu()`` around the
    call) are the caller's: the gradient goes through them as any gradient of the caller's
    would, and only hooks other than those count (`CTCMode`).
    """
    return torch._C._autograd._top_saved_tensors_default_hooks(False)


def _random_draw_reason(model: Any) -> str:
    """Why a random draw in the pass is refused, and what to do: eval mode, unless it is on."""
    reason = "it draws random numbers during the pass, so the copies would not see the same model"
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    if modules and not any(module.training for module in modules):
        return (
            f"{reason}; {type(model).__name__} is in eval mode already, so the draw is its own "
            "at inference too (noise it adds, say), which model.eval() does not stop: draw it "
            "once and keep it (a buffer the model adds, shared by the copies as a bias), or "
            "explain the model without the draw"
        )
    return (
        f"{reason} (stochastic depth, drop path or dropout in training mode); call "
        "model.eval() first"
    )


class CTCMode(TorchFunctionMode):
    """A torch function mode that turns a model's forward into a CTC pass.

    Use it around a forward call on a batch whose copies were built by the CTC class:

        with CTCMode(gated_pass, model):
            logits = model(gated_pass.tag(batch))

    Every call is looked up in the operation -> rule table
    ([`ctc_plugin.ctc.operation_table`][ctc_plugin.ctc.operation_table]). Gate tensors
    ([`GateMark`][ctc_plugin.ctc.rules.GateMark]) are followed: reshaping a gate tensor, or
    combining it with constants, makes a gate tensor (rows with ``keeps_gate``); any operation on
    gate-only tensors (a softmax) makes a gate-only tensor, and a gate-only tensor met by the signal
    is refused unless it multiplies it as a gate or stands for a product of two signals, whose
    copies are then computed ([`ctc_plugin.ctc.deferred`][ctc_plugin.ctc.deferred]). Random draws
    are refused whatever their arguments.
    A refusal names the module whose code made the call.

    Args:
        gated_pass: The rules and state of the pass.
        model: The model (or forward function) the pass runs, to name modules in errors.
    """

    def __init__(self, gated_pass: GatedPass, model: Any = None) -> None:
        super().__init__()
        self.gated_pass = gated_pass
        self.model = model
        self._module_hook: RemovableHandle | None = None
        self._outer_saved_hooks: Any = None

    def __enter__(self) -> CTCMode:
        """Enter the mode, and refuse modules in training mode before they run.

        A model that is a module was checked before the pass; behind another forward function
        (a lambda, ``functools.partial``) a BatchNorm in training mode would count a batch in
        its ``num_batches_tracked`` before its ``batch_norm`` call is refused. A forward
        pre-hook on every module (of this thread's calls only) refuses it first.

        A gradient pass (``"none"``'s fast path) takes its gradient through the live model, so
        hooks that change or refuse gradients would change its scores: a module's backward
        hooks, or forward hooks that put gradient hooks on its tensors (a Zennit composite's
        rules, [`CTCComposite`][ctc_plugin.CTCComposite] inside its attributor). There the
        first module call that carries hooks, or any global module hook of another's, raises
        `GraphCutError`, before its own hooks run, and [`CTC`][ctc_plugin.CTC] computes the
        scores by the pass of the copies, which takes no gradient.
        """
        thread = threading.get_ident()
        gradient = self.gated_pass.gradient
        if gradient and other_global_module_hooks():
            raise GraphCutError("a global module hook")

        def check_module(module: nn.Module, _args: Any) -> None:
            if threading.get_ident() != thread:
                return
            if is_quantized(module):
                raise quantized_module_error(module, "(a module of the forward function)", "CTC")
            if changes_in_training(module):
                raise training_mode_error(module, "(a module of the forward function)")
            if gradient and module_hooks(module):
                raise GraphCutError(f"the hooks of {type(module).__name__}")

        self._outer_saved_hooks = saved_tensor_hooks()
        self._module_hook = register_module_forward_pre_hook(check_module)
        _PASS_HOOKS.add(self._module_hook.id)
        self._eager = contextlib.ExitStack()
        try:
            self._eager.enter_context(compiled_code_stance(True))
            return super().__enter__()
        except BaseException:
            self._eager.close()
            self._remove_module_hook()
            raise

    def __exit__(self, *exc_info: Any) -> None:
        """Leave the mode, let compiled code compile again and remove the module hook.

        Compiled code that dynamo still traced inside the pass (code that compiles itself
        with ``fullgraph=True``, such as flex attention, whose compiled function was cached
        before the pass) fails inside the mode's rules with one of dynamo's errors; it is
        refused as an [`UnsupportedOperationError`][ctc_plugin.UnsupportedOperationError]
        naming the module, with what to run instead.
        """
        try:
            super().__exit__(*exc_info)
        finally:
            self._eager.close()
            self._remove_module_hook()
        error = exc_info[1]
        if error is not None and type(error).__module__.startswith("torch._dynamo"):
            frames = [frame for frame, _ in traceback.walk_tb(exc_info[2])]
            first_line = (str(error).strip().splitlines() or [""])[0]
            raise UnsupportedOperationError(
                "torch.compile'd code",
                "dynamo traced it during the pass instead of running it as Python code, and "
                f"cannot trace the pass's rules ({type(error).__name__}: {first_line}); run the "
                "model uncompiled, and load a Hugging Face model with "
                'attn_implementation="sdpa" or "eager" (flex attention compiles itself)',
                module_in_frames(self.model, reversed(frames)),
            ) from error

    def _remove_module_hook(self) -> None:
        """Remove the pass's global module pre-hook, if it holds one."""
        if self._module_hook is not None:
            _PASS_HOOKS.discard(self._module_hook.id)
            self._module_hook.remove()
            self._module_hook = None

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple = (),
        kwargs: dict | None = None,
    ) -> Any:
        """Route a call to its CTC rule when its arguments carry copies of the pass.

        The rules run with compiled code compiling as outside the pass (the mode is off the
        stack while they run, so nothing of theirs is intercepted).
        """
        if getattr(eager_switch(), "depth", 0):
            with compiled_code_stance(False):
                return self._named(func, args, kwargs or {})
        return self._named(func, args, kwargs or {})

    def _named(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """`_route`, with the running module named in its refusals."""
        with RefusalsNamed(self.model):
            return self._route(func, args, kwargs)

    def _route(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        ctx = self.gated_pass
        if func in RANDOM_FUNCTIONS:
            raise UnsupportedOperationError(operation_name(func), _random_draw_reason(self.model))
        leaves, _ = tree_flatten((args, kwargs))
        tensors = [leaf for leaf in leaves if isinstance(leaf, Tensor)]
        if func in TEMPLATE_FUNCTIONS:
            tensors = tensors[:1]  # the others are templates: their values are never read
        if not any(getattr(t, "_ctc_pass", None) is ctx.token for t in tensors):
            out = func(*args, **kwargs)
            if func in ZERO_FACTORIES and kwargs.get("out") is None:
                ctx.note_zeros(out)
            return out
        propagated = [t for t in tensors if ctx.is_propagated(t)]
        if ctx.gradient:
            if _other_hooks(saved_tensor_hooks(), self._outer_saved_hooks):
                raise GraphCutError("torch.utils.checkpoint (or another saved-tensor hook)")
            own = own_backward(func, propagated)
            if own is not None:
                raise GraphCutError(own)
        refused = [
            getattr(t, REFUSED_ATTRIBUTE) for t in propagated if hasattr(t, REFUSED_ATTRIBUTE)
        ]
        if refused:  # the indices beside x.max(1)'s values: only their size may be read
            out = func(*args, **kwargs)
            if func not in EXIT_FUNCTIONS and not any(
                isinstance(leaf, torch.Tensor) for leaf in tree_flatten(out)[0]
            ):
                return out
            raise UnsupportedOperationError(operation_name(func), refused[0])
        if func in EXIT_FUNCTIONS:
            ctx.left_torch(operation_name(func))
            return func(*args, **kwargs)
        if func in MODEL_BATCH_QUERIES and all(ctx.copy_axis(t) == 0 for t in propagated):
            return func(*tree_map(lambda t: ctx.gate_rows(t) if ctx.is_propagated(t) else t, args))
        if kwargs.get("out") is not None:
            raise UnsupportedOperationError(
                operation_name(func),
                "it writes its result into out=, a tensor whose copies no rule follows (the "
                "model would read it as it was, or with the full image's value in every copy); "
                "call it without out= (y = f(x))",
            )
        row = rule_for(func)
        if row is not None and row.written_out:  # each step of it is routed by its own rule
            return row.handler(ctx, func, args, kwargs)
        if any(deferral(t) is not None for t in propagated):
            return self._with_deferred(func, row, args, kwargs, propagated)
        return self._apply(func, row, args, kwargs, propagated)

    def _apply(
        self,
        func: Callable[..., Any],
        row: OperationRule | None,
        args: tuple,
        kwargs: dict,
        propagated: list[Tensor],
    ) -> Any:
        """Apply ``row``'s rule to a call with ``propagated`` operands (or refuse it).

        Each gate-only tensor of the result is noted where it was made (`_placed`).
        """
        marks = [self.gated_pass.gate_mark(t) for t in propagated]
        out = self._apply_rule(func, row, args, kwargs, propagated, marks)
        return self._placed(func, out, marks)

    def _placed(self, func: Callable[..., Any], out: Any, marks: list[Any]) -> Any:
        """``out``, its new gate-only marks noting where their origin ran (`GateMark`).

        A mark of an operand's origin carried on by ``func`` keeps that origin's module and
        names ``func`` as the last operation it went through; a mark ``func`` made itself
        takes the module whose code called ``func``. Marks passed on as they were (a view,
        the identity) stay as they are.
        """
        ctx = self.gated_pass
        source = next((mark for mark in marks if mark is not None and mark.only), None)
        for leaf in tree_flatten(out)[0]:
            mark = ctx.gate_mark(leaf)
            if mark is None or not mark.only or mark.module is not None or mark.through:
                continue
            if source is not None and source.origin == mark.origin:
                placed = replace(mark, module=source.module, through=operation_name(func))
            else:
                placed = replace(mark, module=running_module_object())
            ctx.keep_mark(leaf, placed)
        return out

    def _apply_rule(
        self,
        func: Callable[..., Any],
        row: OperationRule | None,
        args: tuple,
        kwargs: dict,
        propagated: list[Tensor],
        marks: list[Any],
    ) -> Any:
        """`_apply` without noting where gate-only marks were made (``marks``: the operands')."""
        ctx = self.gated_pass
        all_gates = all(mark is not None for mark in marks)
        gate_only = next((m for m in marks if m is not None and m.only), None)
        moved = next((ctx.copy_axis(t) for t in propagated if ctx.copy_axis(t)), 0)
        reduction = func in REDUCTIONS and gate_only is None  # its handler follows the copies
        if moved and row is not None and not row.follows_copies and not reduction:
            axes = _aligned_copy_axes(ctx, propagated)
            if len(set(axes)) > 1:
                raise examples_combined(operation_name(func), axes)
            if row.trailing_dims is None or gate_only is not None:
                raise copies_off_dim_zero(operation_name(func), moved)
            return self._on_moved_copies(func, row.trailing_dims(args, kwargs), args, kwargs)
        if gate_only is not None and not all_gates and not (row and row.takes_gate_only):
            indices = next((t for t in propagated if is_index_tensor(t)), None)
            raise UnsupportedOperationError(
                operation_name(func),
                computed_indices_reason(indices.dtype)
                if indices is not None
                else f"it reads the output of {gate_only.origin}, a gate tensor of the full pass "
                "that may only multiply or divide the signal (or be a torch.where condition), as "
                "a signal",
            )
        only = all(m is not None and m.only for m in marks)
        if row is None and all_gates:
            # a causal mask (masked_fill), a softmax written out (exp, amax), the sqrt of a
            # variance written out: the full pass's result, gate-only
            origin = gate_only.origin if gate_only is not None and only else operation_name(func)
            return self._of_gate_only(func, args, kwargs, propagated, origin, signal_rows=not only)
        if row is None:
            out = func(*args, **kwargs)
            if not any(isinstance(leaf, torch.Tensor) for leaf in tree_flatten(out)[0]):
                return out  # sizes, dtypes, devices, ...: nothing propagates
            raise UnsupportedOperationError(operation_name(func), _no_rule_reason(func))
        if gate_only is not None and only and not (row.follows_copies or row.from_gate_copy):
            return self._of_gate_only(func, args, kwargs, propagated, gate_only.origin)
        try:
            out = row.handler(ctx, func, args, kwargs)
        except BatchDimensionError as error:
            raise UnsupportedOperationError(operation_name(func), str(error)) from None
        if ctx.gradient:
            ctx.check_gradient(operation_name(func), propagated, tree_flatten(out)[0])
        if all_gates and (gate_only is not None or row.keeps_gate) and not row.gate_as_signal:
            origin = next(mark.origin for mark in marks if mark is not None)
            # a view of a power of the signal (a scaled one) is one too (`GateMark.power`)
            power = gate_only is None and all(m.power for m in marks if m is not None)
            for leaf in tree_flatten(out)[0]:
                if not ctx.is_propagated(leaf):
                    continue
                mark = ctx.gate_mark(leaf)
                # what a gate-only tensor makes is gate-only, whatever its rule marked it
                if mark is None or (gate_only is not None and not mark.only):
                    ctx.mark_gate(leaf, origin, only=gate_only is not None, power=power)
        return out

    def _with_deferred(
        self,
        func: Callable[..., Any],
        row: OperationRule | None,
        args: tuple,
        kwargs: dict,
        propagated: list[Tensor],
    ) -> Any:
        """A call with a deferred product among its operands (see `ctc_plugin.ctc.deferred`).

        With gate-only operands alone, or in a sum with the signal, the call runs as for any
        gate-only tensor and its result carries the deferral on (how to replay the call on the
        copies), unless its rule makes a gate whatever its operands (a softmax, ``sigmoid_`` in
        place, an operation without a rule such as ``exp``): then the deferral ends. A view
        without a rule (``diagonal``, ``select``) still holds the product's entries: it carries the
        deferral, and its replay is refused where its copies are needed, as it is on the
        signal. A product of two gate tensors (`Replay.gate`) multiplying the signal is a gate
        there; read as a signal (by a rule that neither keeps a gate nor makes one: a
        convolution, a linear layer, a sum) its copies are computed at once, so that a squashing
        activation further on is one of a signal, not the end of attention scores. Anywhere
        else (the product meets the signal, or the deferral was carried `MAX_DEPTH` operations)
        the copies are computed and the call runs on them; a call that writes into a deferred
        tensor writes the result back into it.
        """
        ctx = self.gated_pass
        template = slotted(propagated, args, kwargs)
        depth = 1 + max(slot.signal.depth for slot in slots(template))
        meets_signal = any(not (mark := ctx.gate_mark(t)) or not mark.only for t in propagated)
        makes_gate = row is None or row.makes_gate
        within = depth <= MAX_DEPTH
        gates = all(slot.signal.replay.gate for slot in slots(template))
        plain_signal = any(not ctx.gate_mark(t) for t in propagated)
        if gates and plain_signal and row is not None and row.takes_gate_only and func not in SUMS:
            return ended(self._apply(func, row, args, kwargs, propagated))  # x * (g1 * g2)
        # a product of two gate tensors read as a signal (a convolution, a linear layer, a sum):
        # its copies now, or a squashing activation further on would end it as a gate of the
        # full pass only, as it ends attention scores
        read_as_signal = (
            gates and row is not None and not row.makes_gate and not _keeps_gate(func, row)
        )
        if read_as_signal:
            makes_gate = within = False
        if makes_gate and not meets_signal:
            out = self._apply(func, row, args, kwargs, propagated)
            if row is not None or writes_first(func) or not _views_deferred(out, propagated):
                return ended(out)
            if within:
                return self._carried(func, row, template, args, out, propagated, depth)
        sum_out_of_place = func in SUMS and not writes_first(func)
        if not makes_gate and within and (not meets_signal or sum_out_of_place):
            template = self._before_write(func, template)
            out = self._gate_only_reading(func, row, args, kwargs, propagated)
            if out is not REFUSED:
                return self._carried(func, row, template, args, out, propagated, depth)
        replayed_args, replayed_kwargs = materialised(template)
        first = template[0][0] if template[0] else None
        if not (writes_first(func) and isinstance(first, Slot)):
            return self._route(func, replayed_args, replayed_kwargs)
        copies = self._route(torch.Tensor.clone, (replayed_args[0],), {})  # the cache stays
        self._route(func, (copies, *replayed_args[1:]), replayed_kwargs)
        return self._written_back(args[0], copies)

    def _before_write(self, func: Callable[..., Any], template: tuple[tuple, dict]) -> tuple:
        """``template`` with the tensor an in-place ``func`` writes into as it is now.

        A call writing a deferred product into a tensor that is none (``x[i] = q @ k^T``,
        ``ones.add_(a @ b)``) gives that tensor the deferral; its replay starts from a copy
        of what the tensor held before (with its marks), not from the tensor, which by then
        holds the gate-only result and its new deferral.
        """
        args, kwargs = template
        if not (writes_first(func) and args and isinstance(args[0], Tensor)):
            return template
        ctx, first = self.gated_pass, args[0]
        kept = first.clone()  # the mode is off while a call is routed: a plain clone
        if ctx.is_propagated(first):
            ctx.tag_like(kept, first)
        return (kept, *args[1:]), kwargs

    def _carried(
        self,
        func: Callable[..., Any],
        row: OperationRule | None,
        template: tuple[tuple, dict],
        args: tuple,
        out: Any,
        propagated: list[Tensor],
        depth: int,
    ) -> Any:
        """``out`` (``x[i] = v``: ``x``) given the deferral of ``func``'s result; return ``out``.

        Its replay runs ``func`` on the copies of the deferred operands (`template`, see
        [`slotted`][ctc_plugin.ctc.deferred.slotted]) and on the other operands as they are,
        which must not be written in place before it runs (they are watched). ``row`` is
        ``func``'s rule: a gate product stays one through a row that keeps a gate.
        """

        def replay() -> Any:
            replayed_args, replayed_kwargs = materialised(template)
            if writes_first(func):  # on a copy: the copies it starts from are kept
                first = self._route(torch.Tensor.clone, (replayed_args[0],), {})
                replayed_args = (first, *replayed_args[1:])
            result = self._route(func, replayed_args, replayed_kwargs)
            return replayed_args[0] if func is torch.Tensor.__setitem__ else result

        kept = tree_flatten(template)[0]
        watched = [(t, t._version) for t in propagated if any(t is leaf for leaf in kept)]
        written = args[0] if func is torch.Tensor.__setitem__ else out
        # still a gate where it meets the signal: through what keeps a gate (scaling, reshaping,
        # masking), not through a convolution or a sum with the signal
        keeps = row is not None and _keeps_gate(func, row)
        gate = keeps and all(slot.signal.replay.gate for slot in slots(template))
        defer(written, Replay(replay, operation_name(func), watched, gate=gate), depth)
        return out

    def _gate_only_reading(
        self,
        func: Callable[..., Any],
        row: OperationRule | None,
        args: tuple,
        kwargs: dict,
        propagated: list[Tensor],
    ) -> Any:
        """The call with its deferred operands read as gate-only tensors; `REFUSED` if refused.

        A rule that takes no gate-only input (an LSTM's sequence) refuses that reading; the
        operands are then read as the signals they stand for.
        """
        try:
            return self._apply(func, row, args, kwargs, propagated)
        except UnsupportedOperationError:
            return REFUSED

    def _written_back(self, deferred: Tensor, written: Tensor) -> Tensor:
        """``deferred`` given the values and marks of ``written`` (its copies, written in place)."""
        deferred.copy_(written)
        return self.gated_pass.tag_like(deferred, written)

    def _on_moved_copies(
        self, func: Callable[..., Any], trailing: int, args: tuple, kwargs: dict
    ) -> Any:
        """A rule confined to the last ``trailing`` dims, on copies a shape operation moved.

        OpenAI CLIP's transformer runs sequence-first, ``(L, N, D)``: the copies lie along
        dim 1. A rule that acts only on the last dims (``linear``, ``layer_norm`` over ``D``)
        or elementwise (gates, residual sums, products with gate tensors) acts on each copy
        alone wherever the copies lie, so it runs on views of its operands with the copies
        moved to dim 0 (broadcast operands padded to the result's rank first, as broadcasting
        aligns them), and its results are moved back. A rule that would act on the copies'
        dim, or operands holding them along different dims, is refused.
        """
        ctx = self.gated_pass
        name = operation_name(func)
        leaves, _ = tree_flatten((args, kwargs))
        propagated = [t for t in leaves if ctx.is_propagated(t)]
        rank = max(t.dim() for t in propagated)
        axes = set(_aligned_copy_axes(ctx, propagated))
        if len(axes) != 1:
            raise examples_combined(name, sorted(axes))
        (axis,) = axes
        if axis >= rank - trailing:
            raise copies_off_dim_zero(name, axis)

        if any(isinstance(t, Tensor) and t.dim() > rank for t in leaves):
            raise UnsupportedOperationError(
                name,
                f"a constant operand has more dims than the signal ({rank}), whose copies lie "
                f"along dim {axis}: it would broadcast the copies into a larger tensor",
            )

        def to_front(value: Any) -> Any:
            if not isinstance(value, Tensor):
                return value
            if not ctx.is_propagated(value):  # a constant broadcast over the copies moves too
                if trailing or value.dim() < rank - axis:
                    return value
                return value[(None,) * (rank - value.dim())].movedim(axis, 0)
            moved = ctx.tag(value[(None,) * (rank - value.dim())].movedim(axis, 0))
            mark = ctx.gate_mark(value)
            return ctx.keep_mark(moved, mark)

        moved_args, moved_kwargs = tree_map(to_front, (args, kwargs))
        out = self._route(func, moved_args, moved_kwargs)
        first = moved_args[0] if moved_args else None

        def back(value: Any) -> Any:
            if not ctx.is_propagated(value):
                return value
            mark = ctx.gate_mark(value)
            if value is first and ctx.is_propagated(args[0]):  # in place: written through a view
                result = ctx.tag(args[0], ctx.copy_axis(args[0]))
            else:  # contiguous, as the operation returns it
                result = ctx.tag(value.movedim(0, axis).contiguous(), axis)
            return ctx.keep_mark(result, mark)

        return tree_map(back, out)

    def _of_gate_only(
        self,
        func: Callable[..., Any],
        args: tuple,
        kwargs: dict,
        propagated: list[Tensor],
        origin: str,
        signal_rows: bool = False,
    ) -> Any:
        """An operation whose propagated inputs are all gate-only: the full pass's result.

        Only the gate copy of a gate-only tensor means anything, so the operation runs on the
        gate copy's rows of every propagated input (the model's own batch; a constant with one
        row per copy gives its gate copy's rows too) and its result is given to every copy: the
        full pass's value, also for an operation that mixes the rows of dim 0 (``softmax(0)``,
        ``cumsum(0)``), which applied to every row would mix the copies. The rules of the signal
        would not do: a bias would be shared among the copies (an ``nn.Linear`` on attention
        probabilities, ``probabilities + 1e-3``), a squashing activation would make a gate that
        passes for a signal. An in-place operation (``scores.masked_fill_(mask, -inf)``,
        ``x[i] = scores``) writes the full pass's result into every copy of its tensor and
        returns it: a constant written into becomes gate-only. Two kinds run on
        the whole tensors instead: a call that returns no tensor (``size``, ``shape``: the
        pass's sizes, not the model's batch) and one that returns a view of its input
        (``scores.diagonal(...)``, so that a write through the view reaches the tensor); a view
        must keep the copies' rows. Refused: a result without the batch's rows and copies a
        shape operation moved off dim 0 (``out=`` is refused for every operation, earlier).
        A number of the whole batch (a 0-dim result: ``(h > 0).sum()``) and ``all``/``any``
        over the batch (``assert (x >= 0).all()``, ``torch.isfinite(x).all()``) are the model's
        own values on its batch: plain constants of the pass (`BATCH_CHECKS`), so input checks
        pass or fail as in the model. With ``signal_rows`` (some operand is a gate tensor whose
        other rows are a signal's, a sigmoid's output), writing in place and taking a view are
        refused too: the full image's value would land in rows the model reads as the signal. A
        constant with one row per copy whose rows differ (taken out of torch) is refused where
        the full pass cannot use it.
        """
        ctx = self.gated_pass
        name = operation_name(func)
        moved = next((ctx.copy_axis(t) for t in propagated if ctx.copy_axis(t)), 0)
        if moved:
            raise copies_off_dim_zero(name, moved)
        reference = propagated[0]
        rows = ctx.gate_rows(reference).shape[0]
        in_place = writes_first(func)  # x[i] = v too
        if signal_rows and in_place:
            raise UnsupportedOperationError(
                name,
                "no CTC rule is defined for it in place on a gate tensor whose copies are a "
                "signal's (a sigmoid's output); write it out of place",
            )

        def gate_copy(value: Any) -> Any:
            gate = ctx.full_pass_operand(value, reference)
            written = in_place and value is args[0] and isinstance(gate, Tensor)
            return gate.clone() if written else gate  # the model's tensor is written below

        gate_args, gate_kwargs = tree_map(gate_copy, (args, kwargs))
        out = ctx.call_on_full_pass(func, gate_args, gate_kwargs, reference, name)
        if func is torch.Tensor.__setitem__:  # x[i] = v returns nothing: x is what it makes
            out = gate_args[0]
        leaves, spec = tree_flatten(out)
        tensors = [leaf for leaf in leaves if isinstance(leaf, Tensor)]
        if not tensors:
            return func(*args, **kwargs)  # sizes and the like: of the pass's own tensors
        inputs = [t for t in tree_flatten((gate_args, gate_kwargs))[0] if isinstance(t, Tensor)]
        if not in_place and any(_shares_memory(leaf, t) for leaf in tensors for t in inputs):
            if signal_rows:
                raise UnsupportedOperationError(
                    name,
                    "it takes a view of a gate tensor whose copies are a signal's (a sigmoid's "
                    "output), which a write through the view would turn into the full image's "
                    "value; no CTC rule is defined for it",
                )
            return self._view_of_gate_only(func, args, kwargs, reference, origin)
        if any(leaf.dim() == 0 or leaf.shape[0] != rows for leaf in tensors):
            if all(leaf.dim() == 0 for leaf in tensors) or func in BATCH_CHECKS:
                return out  # the model's own value on its batch, a constant of the pass
            raise UnsupportedOperationError(
                name,
                f"it combines the copies of {origin}, a gate tensor of the full pass, along dim 0",
            )
        full = [
            ctx.broadcast_gate(leaf, origin) if isinstance(leaf, Tensor) else leaf
            for leaf in leaves
        ]
        if in_place:
            target = args[0]
            target.copy_(full[0])
            return (
                target
                if ctx.is_propagated(target)
                else ctx.mark_gate(ctx.tag(target), origin, only=True)
            )
        return tree_unflatten(full, spec)

    def _view_of_gate_only(
        self, func: Callable[..., Any], args: tuple, kwargs: dict, reference: Tensor, origin: str
    ) -> Any:
        """A view of a gate-only tensor, taken of the whole tensor: it must keep the copies' rows.

        Raises:
            UnsupportedOperationError: A view without the batch's rows (one that selects or
                mixes the copies along dim 0).
        """
        ctx = self.gated_pass
        out = func(*args, **kwargs)
        tensors = [leaf for leaf in tree_flatten(out)[0] if isinstance(leaf, Tensor)]
        if any(leaf.dim() == 0 or leaf.shape[0] != reference.shape[0] for leaf in tensors):
            raise UnsupportedOperationError(
                operation_name(func),
                f"it takes a view of {origin}, a gate tensor of the full pass, that does not keep "
                "the copies along dim 0",
            )
        for leaf in tensors:
            ctx.mark_gate(ctx.tag(leaf), origin, only=True)
        return out


@contextlib.contextmanager
def decomposed(gated_pass: GatedPass, operation: str) -> Iterator[None]:
    """Run a handler's decomposition of ``operation`` inside a CTC mode of its pass.

    The handlers that write a call out in operations of the table (``baddbmm`` as ``@``, ``*``
    and ``+``, ``addcmul``, ``F.glu``, ``nn.MultiheadAttention``) run those operations in
    this mode, so each is routed by its own rule. A step refused is refused naming the call
    and the step, ``torch.addcmul (written out: torch.mul)`` (a refusal of the handler's own
    keeps the call's name), and without a module: the mode that routed the call names the
    module whose code made it, with its path in the model (``blocks.0.attn
    (MultiheadAttention)``), as for any other refusal, where this mode, which does not know
    the model, could name only its type.

    Args:
        gated_pass: The rules and state of the pass the call belongs to.
        operation: The call's name, as the pass names it (``torch.addcmul``).

    Raises:
        UnsupportedOperationError: A step refused (or the handler's own refusal), as above.
        UntracedOutputError: A step met a constant taken out of torch, without a module.
    """
    try:
        with CTCMode(gated_pass):
            yield
    except UnsupportedOperationError as error:
        step = error.operation
        named = step if step == operation else f"{operation} (written out: {step})"
        raise UnsupportedOperationError(named, error.reason, at_output=error.at_output) from None
    except UntracedOutputError as error:
        raise error.in_module(None) from None


def _keeps_gate(func: Callable[..., Any], row: OperationRule) -> bool:
    """Whether ``func`` keeps a gate tensor a gate (scaling, reshaping, masking; not a sum)."""
    return row.keeps_gate and func not in SUMS


def _aligned_copy_axes(ctx: GatedPass, propagated: list[Tensor]) -> list[int]:
    """The dim each of ``propagated`` holds its copies along, counted in the largest rank.

    Operands are padded in front to the largest rank, as broadcasting aligns them: (L, N, D)
    and (N, D) hold their copies along the same dim, 1.
    """
    rank = max(t.dim() for t in propagated)
    return [ctx.copy_axis(t) + rank - t.dim() for t in propagated]


def _views_deferred(out: Any, propagated: list[Tensor]) -> bool:
    """Whether a tensor among ``out``'s leaves is a view of a deferred tensor of ``propagated``."""
    deferred = [t for t in propagated if deferral(t) is not None]
    return any(
        _shares_memory(leaf, t)
        for leaf in tree_flatten(out)[0]
        if isinstance(leaf, Tensor)
        for t in deferred
    )


def _shares_memory(result: Tensor, operand: Tensor) -> bool:
    """Whether ``result`` is a view of ``operand``'s memory (``diagonal``, ``select``, ...)."""
    storage = operand.untyped_storage()
    return storage.nbytes() > 0 and result.untyped_storage().data_ptr() == storage.data_ptr()


def running_module(model: Any = None) -> str | None:
    """The innermost module whose code is running, as ``"path (Type)"``, read off the stack.

    Used when a pass refuses an operation, to say where in the model it was called.

    Args:
        model: The model the pass runs (or a bound method of it); module paths are relative to
            it. Without one, only the module's type is named.
    """
    return module_name(model, running_module_object())


def running_module_object() -> nn.Module | None:
    """The innermost module whose code is running (read off the stack), or ``None``."""
    return module_of_frames(_callers())


def _callers() -> Iterator[FrameType]:
    """The frames of the stack, innermost first (from the caller of this one's caller)."""
    frame = sys._getframe(2)
    while frame is not None:
        yield frame
        frame = frame.f_back


def module_in_frames(model: Any, frames: Iterable[FrameType]) -> str | None:
    """The first module whose code runs in ``frames`` (innermost first), as ``"path (Type)"``.

    See [`running_module`][ctc_plugin.ctc.interception.running_module]; this one reads any
    frames, such as those of an exception's traceback.
    """
    return module_name(model, module_of_frames(frames))


def module_of_frames(frames: Iterable[FrameType]) -> nn.Module | None:
    """The first module whose code (a method of it) runs in ``frames``, or ``None``."""
    for frame in frames:
        code = frame.f_code
        if code.co_argcount and code.co_varnames[0] == "self":
            owner = frame.f_locals.get("self")
            if isinstance(owner, nn.Module):
                return owner
    return None


def named_in(
    error: UnsupportedOperationError | UntracedOutputError, model: Any, module: nn.Module | None
) -> UnsupportedOperationError | UntracedOutputError:
    """``error``, saying that ``module`` (its path within ``model``) made the call it refuses.

    The one place that puts the module into a refusal of the pass, for both routes: an
    operation [`CTCMode`][ctc_plugin.ctc.attribution.CTCMode] intercepts (the running module)
    and a module a [`CTCComposite`][ctc_plugin.CTCComposite] rule handles (that module).
    ``error`` itself where it names a module already or ``module`` is ``None``.
    """
    if error.module is not None or module is None:
        return error
    return error.in_module(module_name(model, module))


#: `RefusalsNamed`'s ``module`` for the running module, read off the stack on a refusal.
_RUNNING: Any = object()


class RefusalsNamed:
    """A block whose refusals say which module made the call (`named_in`), re-raised as such.

    ``with RefusalsNamed(model, module): ...`` re-raises an `UnsupportedOperationError` or
    `UntracedOutputError` from the block as ``named_in(error, model, module)`` (the original
    suppressed as context); any other exception, and a refusal that names a module already,
    pass unchanged. Without ``module``, the module whose code runs (`running_module_object`)
    is read off the stack only when a refusal is raised: entering costs no stack walk on
    every intercepted call.
    """

    __slots__ = ("model", "module")

    def __init__(self, model: Any, module: nn.Module | None = _RUNNING) -> None:
        self.model = model
        self.module = module

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> bool:
        if not isinstance(error, (UnsupportedOperationError, UntracedOutputError)):
            return False
        module = running_module_object() if self.module is _RUNNING else self.module
        named = named_in(error, self.model, module)
        if named is error:
            return False
        raise named from None


def module_name(model: Any, module: nn.Module | None) -> str | None:
    """``module`` as ``"path (Type)"`` within ``model`` (a module or a bound method of one).

    The path is the one the user's model gives it (`ctc_plugin.module_paths.module_path`).

    ``"a Type module"`` (``"an Atan module"``) where it is not in ``model``; ``None`` for no module.
    """
    if module is None:
        return None
    root = model if isinstance(model, nn.Module) else getattr(model, "__self__", None)
    kind = type(module).__name__
    name = module_path(root, module) if isinstance(root, nn.Module) else None
    if name is not None:  # the user's own path, also behind the package's normalisation
        return f"{name} ({kind})" if name else f"the model ({kind})"
    return f"{with_article(kind)} module"
