"""CTC as a Zennit composite: the per-operation rules of `ctc_plugin.ctc.rules` as hooks.

Each hook is a thin adapter: it finds the module's propagated input, calls the matching method
of the running [`GatedPass`][ctc_plugin.ctc.rules.GatedPass] (the same methods the Captum class
reaches through [`CTCMode`][ctc_plugin.ctc.attribution.CTCMode]) and hands the result on as the
module's output. Every rule but the affine one is applied in a forward pre-hook, on the
module's untouched input (in-place activations cannot destroy the pre-activation), and the
module itself then runs on an empty batch so that no work is done twice:

- [`AffineRule`][ctc_plugin.ctc.composite.AffineRule] (convolutions, transposed convolutions,
  ``Linear``): the module runs without its bias, then
  [`GatedPass.affine`][ctc_plugin.ctc.rules.GatedPass.affine] adds the bias shared among the copies;
- [`BatchNormRule`][ctc_plugin.ctc.composite.BatchNormRule]:
  [`GatedPass.fold_batch_norm`][ctc_plugin.ctc.rules.GatedPass.fold_batch_norm] (eval mode only);
- [`ReLURule`][ctc_plugin.ctc.composite.ReLURule],
  [`LeakyReLURule`][ctc_plugin.ctc.composite.LeakyReLURule] (also ``PReLU``):
  [`GatedPass.relu_gate`][ctc_plugin.ctc.gate_rules.GateRules.relu_gate] and
  [`GatedPass.leaky_relu_gate`][ctc_plugin.ctc.gate_rules.GateRules.leaky_relu_gate];
- [`RescaleRule`][ctc_plugin.ctc.composite.RescaleRule]: smooth activations (SiLU, GELU, Tanh, ...)
  as rescale gates;
- [`MaxPoolRule`][ctc_plugin.ctc.composite.MaxPoolRule]:
  [`GatedPass.max_pool_switches`][ctc_plugin.ctc.gate_rules.GateRules.max_pool_switches];
- [`NormRule`][ctc_plugin.ctc.composite.NormRule]: LayerNorm, GroupNorm, InstanceNorm and RMSNorm
  with their statistics as gates
  ([`layer_norm`][ctc_plugin.ctc.norm_rules.NormalisationRules.layer_norm] and its siblings).

The hooks only act while a CTC pass runs ([`hooked_pass`][ctc_plugin.ctc.composite.hooked_pass],
used by [`CTCAttributor`][ctc_plugin.CTCAttributor]) and only on tensors carrying that pass's
copies; at any other time a model inside ``composite.context(model)`` computes exactly what it
computes without the composite's rules (its canonizers change the model: zennit 0.5.1's BatchNorm
merge moves the output by its ``eps``), and a gradient through a hooked module raises
[`CompositeOutsideAttributorError`][ctc_plugin.ctc.errors.CompositeOutsideAttributorError] (Zennit's
gradient attributors would otherwise return the plain gradient).

Operations that happen outside every hooked module (residual additions, ``torch.cat``,
reshaping, a functional ``F.relu`` in a ``forward``, a normalisation written as
``(x - mean) / std``) are seen by a guard (a `TorchFunctionMode`) that
routes them to the same rules, or, with ``functional="raise"``, refuses every one that needs
a rule by name.

Importing this module registers the composite in Zennit's registry as ``"ctc"``:
``zennit.composites.COMPOSITES["ctc"]``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from zennit.canonizers import Canonizer
from zennit.composites import LayerMapComposite, register_composite
from zennit.core import CompositeContext, Hook, RemovableHandleList

from ctc_plugin.batchnorm import BATCH_NORM_TYPES
from ctc_plugin.canonizers import (
    RegisteredTensors,
    check_canonizers,
    held_composites,
    refuse_a_second_composite,
    registered_tensors,
    remove_handles,
    restore_tensors,
    rule_hooks,
)
from ctc_plugin.concurrency import exclusive
from ctc_plugin.ctc.calls import operation_name
from ctc_plugin.ctc.errors import (
    CompositeOutsideAttributorError,
    UnsupportedOperationError,
)
from ctc_plugin.ctc.gate_handlers import prelu_slope
from ctc_plugin.ctc.handlers import refuse_batch_statistics
from ctc_plugin.ctc.interception import (
    CTCMode,
    RefusalsNamed,
    running_module,
    running_module_object,
)
from ctc_plugin.ctc.rules import GatedPass
from ctc_plugin.ctc.sharing import DEFAULT_BIAS_SHARING, BiasSharingMode, check_mode

FunctionalPolicy = Literal["intercept", "raise"]
#: What the composite does with functional calls that no module hook sees (see `CTCComposite`).
FUNCTIONAL_POLICIES: tuple[str, ...] = ("intercept", "raise")

_MISSING = object()


# ---------------------------------------------------------------------------- pass state
@dataclass
class _PassState:
    """What the hooks need while one CTC pass runs.

    Attributes:
        gated: The rules and state of the pass.
        model: The model the pass runs (or a bound method of it), to name modules in errors.
        depth: How many hooked modules are running (the guard leaves their insides alone).
        pending: Results prepared before a module ran, per hook (a stack per call).
        removed_biases: ``(module, previous)`` for every bias taken off a module; restored after
            the module ran, and at the latest when the pass ends.
        hooked_calls: Number of module calls a CTC hook handled (for diagnostics and tests).
    """

    gated: GatedPass
    model: Any = None
    depth: int = 0
    pending: dict[int, list[Any]] = field(default_factory=dict)
    removed_biases: list[tuple[nn.Module, Any]] = field(default_factory=list)
    hooked_calls: int = 0

    def remove_bias(self, module: nn.Module) -> Any:
        """Run ``module`` without its bias until `restore_bias`; return the bias.

        The bias is shadowed in the instance dict (``object.__setattr__``), which works whether
        it is a registered parameter or a tensor a Zennit 1.x canonizer put there.
        """
        previous = module.__dict__.get("bias", _MISSING)
        bias = getattr(module, "bias", None)
        object.__setattr__(module, "bias", None)
        self.removed_biases.append((module, previous))
        return bias

    def restore_bias(self, module: nn.Module) -> None:
        """Undo the latest `remove_bias` of ``module``."""
        for index in range(len(self.removed_biases) - 1, -1, -1):
            if self.removed_biases[index][0] is module:
                _, previous = self.removed_biases.pop(index)
                _put_back(module, previous)
                return

    def restore_all(self) -> None:
        """Put every removed bias back (the pass ended, maybe by an exception)."""
        while self.removed_biases:
            module, previous = self.removed_biases.pop()
            _put_back(module, previous)


def _put_back(module: nn.Module, previous: Any) -> None:
    if previous is _MISSING:
        del module.__dict__["bias"]
    else:
        object.__setattr__(module, "bias", previous)


_ACTIVE: ContextVar[_PassState | None] = ContextVar("ctc_hooked_pass", default=None)


# ---------------------------------------------------------------------------- hooks
class CTCHook(Hook):
    """Base class of the CTC rules as Zennit hooks.

    A rule acts only while a CTC pass runs and the module's first input carries that pass's copies;
    otherwise the module computes what it always computes. Subclasses implement
    [`before`][ctc_plugin.ctc.composite.CTCHook.before], which runs in a forward pre-hook on the
    module's untouched input (so an in-place module cannot destroy it) and usually computes the
    whole result; the module itself then runs on an empty batch, and
    [`after`][ctc_plugin.ctc.composite.CTCHook.after] (the forward hook) hands the result on. Rules
    take no arguments: everything a pass needs is bound per call, so ``copy()`` returns a fresh
    instance of the same class.

    Works with Zennit 0.5.1 and 1.x: the hook implements the three-argument ``forward`` and adds one
    forward pre-hook in [`register`][ctc_plugin.ctc.composite.CTCHook.register];
    ``pre_forward``/``post_forward`` are Zennit's own.
    """

    def register(self, module: nn.Module) -> RemovableHandleList:
        """Register Zennit's hooks plus the pre-hook that prepares the rule; return the handles.

        The forward hook that gives the module's CTC output goes before the module's other
        forward hooks (Zennit appends it last), so that a user's hook sees, and may change, the
        output of the pass, as it would in the model's own forward; the pre-hook goes after
        the other pre-hooks, so that it prepares the input they hand on.
        """
        handles = super().register(module)
        last = handles[-1]  # Zennit's registration of self.forward
        if module._forward_hooks.get(last.id) == self.forward:
            last.remove()
            handles[-1] = module.register_forward_hook(self.forward, prepend=True)
        handles.append(module.register_forward_pre_hook(self._before_module))
        return handles

    def copy(self) -> CTCHook:
        """Return a fresh instance of the same rule (rules hold no arguments)."""
        return type(self)()

    def pre_forward(self, module: nn.Module, args: tuple, *kwargs: Any) -> Any:
        """Zennit's pre-hook (it prepares the gradient refusal); nothing for a keyword-only call.

        zennit 0.5.1's pre-hook indexes the positional inputs, so a module called by keyword
        (``self.fc(input=x)``) would fail with an ``IndexError``; zennit 1.x passes ``kwargs``
        too (hence ``*kwargs``, which keeps Zennit's detection of it working).
        """
        if not args:
            return None
        return super().pre_forward(module, args, *kwargs)

    #: Whether [`before`][ctc_plugin.ctc.composite.CTCHook.before] computes the whole result. The
    #: module then runs on an empty batch (its own work would be thrown away) and
    #: [`after`][ctc_plugin.ctc.composite.CTCHook.after] only hands the result on.
    computes_before: bool = True

    # -- the two halves of a module call
    def _before_module(self, module: nn.Module, args: tuple) -> tuple | None:
        state = _ACTIVE.get()
        if state is None:
            return None
        stack = state.pending.setdefault(id(self), [])
        if not args or not state.gated.is_propagated(args[0]):
            stack.append(None)  # a call this rule leaves alone
            return None
        mark = state.gated.gate_mark(args[0])
        if mark is not None and mark.only:  # the full pass's values in every copy: the module
            stack.append(None)  # runs as it is (CTCMode computes and marks what it makes)
            return None
        x = args[0]
        if state.gated.copy_axis(x):  # copies a shape operation moved (CLIP's (L, N, D)): the
            stack.append(None)  # module runs as it is, and CTCMode follows or refuses its calls
            return None
        state.depth += 1
        state.hooked_calls += 1
        try:
            with RefusalsNamed(state.model, module):  # the module's path, as CTC's route
                prepared = self.before(state, module, x)
        except BaseException:
            state.depth -= 1
            raise
        stack.append((x, prepared))
        return (self.placeholder(x), *args[1:]) if self.computes_before else None

    def forward(self, module: nn.Module, input: tuple, output: Any) -> Any:
        """Zennit's forward hook: return the module's output in the CTC pass (else ``None``)."""
        state = _ACTIVE.get()
        stack = None if state is None else state.pending.get(id(self))
        entry = stack.pop() if stack else None
        if entry is None:
            return None
        x, prepared = entry
        mark = state.gated.gate_mark(x)  # read first: an in-place module's rule re-tags x
        try:
            with RefusalsNamed(state.model, module):
                out = self.after(state, module, x, output, prepared)
        finally:
            state.depth -= 1
        if mark is not None and mark.only:  # as CTCMode: what a gate-only tensor makes is one
            state.gated.mark_gate(out, mark.origin, only=True)
        return out

    def pre_backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> Any:
        """Zennit's hook on the module's output gradient: refuse, as `backward` does.

        Zennit hooks a module's input gradient only for positional inputs; the output is hooked
        either way, so a module called by keyword (``self.fc(input=x)``) refuses too.

        Raises:
            CompositeOutsideAttributorError: Always.
        """
        raise CompositeOutsideAttributorError(type(module).__name__)

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> Any:
        """Zennit's backward hook: refuse, since CTC relevance is not a modified gradient.

        A CTC pass runs without gradients, so this is reached only when a gradient runs through
        the hooked model outside [`CTCAttributor`][ctc_plugin.CTCAttributor] (Zennit's
        ``Gradient``, ``SmoothGrad``, ``IntegratedGradients``, or ``output.backward()`` inside
        ``composite.context(model)``), which would otherwise return the plain gradient.

        Raises:
            CompositeOutsideAttributorError: Always; the message names what to use instead.
        """
        raise CompositeOutsideAttributorError(type(module).__name__)

    def placeholder(self, x: torch.Tensor) -> torch.Tensor:
        """What the module runs on when `before` computed its result: an empty batch."""
        return x[:0]

    # -- what subclasses implement
    def before(self, state: _PassState, module: nn.Module, x: torch.Tensor) -> Any:
        """Apply the rule (or prepare it) before the module runs, on its untouched input ``x``.

        The return value reaches [`after`][ctc_plugin.ctc.composite.CTCHook.after].
        """
        raise NotImplementedError

    def after(
        self, state: _PassState, module: nn.Module, x: torch.Tensor, output: Any, prepared: Any
    ) -> torch.Tensor:
        """Return the module's output in the CTC pass (default: what `before` computed).

        An in-place module's input receives the result too, as the module would have written it.
        """
        if getattr(module, "inplace", False):
            x.copy_(prepared)
            return state.gated.tag(x)
        return prepared


class AffineRule(CTCHook):
    """Convolutions, transposed convolutions and ``Linear``: bias-free result plus shared bias.

    The module runs with its bias taken off (so its own operation computes the bias-free part), then
    [`GatedPass.affine`][ctc_plugin.ctc.rules.GatedPass.affine] adds the bias: whole to the gate
    copy, shared among the others.
    """

    computes_before = False

    def before(self, state: _PassState, module: nn.Module, x: torch.Tensor) -> Any:
        """Take the bias off the module for this call; return it."""
        return state.remove_bias(module)

    def after(
        self, state: _PassState, module: nn.Module, x: torch.Tensor, output: Any, prepared: Any
    ) -> torch.Tensor:
        """Put the bias back and share it among the copies."""
        state.restore_bias(module)
        bias = prepared
        if bias is not None and not isinstance(module, nn.Linear):  # (C,) -> (C, 1, ...)
            bias = bias.reshape(-1, *([1] * (output.dim() - 2)))
        return state.gated.affine(output, bias, foldable=True)


class BatchNormRule(CTCHook):
    """BatchNorm in eval mode, folded into a preceding biased layer (`fold_batch_norm`)."""

    def before(self, state: _PassState, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Apply ``x * scale + shift`` with the module's running statistics."""
        return _running_norm(state.gated, module, x)


def _running_norm(gated: GatedPass, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A BatchNorm or InstanceNorm module with running statistics, in eval mode only."""
    mean = getattr(module, "running_mean", None)
    var = getattr(module, "running_var", None)
    running = mean is not None and var is not None
    # the function the module calls, as CTC's own route names it in the same refusal
    function = F.batch_norm if isinstance(module, BATCH_NORM_TYPES) else F.instance_norm
    refuse_batch_statistics(operation_name(function), module.training, running, module)
    return gated.running_norm(x, mean, var, module.weight, module.bias, module.eps)


class _GateRule(CTCHook):
    """Gates computed from the pre-activation before the module runs (in-place safe)."""

    def before(self, state: _PassState, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Compute the gated copies from the pre-activation."""
        return self.gate(state.gated, module, x)

    def gate(self, gated: GatedPass, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Apply the gate rule to ``x``."""
        raise NotImplementedError


class ReLURule(_GateRule):
    """ReLU: every copy passes where the original pre-activation was positive."""

    def gate(self, gated: GatedPass, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """[`relu_gate`][ctc_plugin.ctc.gate_rules.GateRules.relu_gate] on a new tensor."""
        return gated.relu_gate(x)


class LeakyReLURule(_GateRule):
    """LeakyReLU, PReLU: slope 1 where the original was positive, the module's slope elsewhere."""

    def gate(self, gated: GatedPass, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`GatedPass.leaky_relu_gate` with the module's ``negative_slope`` (PReLU's weight)."""
        if isinstance(module, nn.PReLU):
            return gated.leaky_relu_gate(x, prelu_slope(module.weight, x))
        return gated.leaky_relu_gate(x, float(module.negative_slope))


class RescaleRule(_GateRule):
    """Smooth elementwise activations as rescale gates ``y / x`` of the original pass.

    Where ``f(0) != 0`` (sigmoid, softplus), ``(y - f(0)) / x``, with ``f(0)`` a bias shared
    among the copies ([`rescale_gate`][ctc_plugin.ctc.gate_rules.GateRules.rescale_gate]).

    The outputs of squashing activations
    ([`SQUASHING_TYPES`][ctc_plugin.ctc.composite.SQUASHING_TYPES]) are also gate tensors that may
    multiply the signal (squeeze-excitation).
    """

    def gate(self, gated: GatedPass, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`GatedPass.rescale_gate` with the module's own activation (on a clone)."""
        origin = type(module).__name__ if isinstance(module, SQUASHING_TYPES) else None
        return gated.rescale_gate(x, lambda t: module.forward(t.clone()), origin)


class NormRule(_GateRule):
    """LayerNorm, GroupNorm, InstanceNorm and RMSNorm: normalisation statistics as gates.

    Each copy is centred on its own mean and divided by the gate copy's standard deviation
    ([`layer_norm`][ctc_plugin.ctc.norm_rules.NormalisationRules.layer_norm],
    [`group_norm`][ctc_plugin.ctc.norm_rules.NormalisationRules.group_norm],
    [`instance_norm`][ctc_plugin.ctc.norm_rules.NormalisationRules.instance_norm] of
    `GatedPass`); an InstanceNorm with running statistics in eval mode is an affine map like
    BatchNorm.
    """

    def placeholder(self, x: torch.Tensor) -> torch.Tensor:
        """One row: InstanceNorm cannot run on an empty batch."""
        return x[:1]

    def gate(self, gated: GatedPass, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Apply the module's normalisation rule."""
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if isinstance(module, nn.LayerNorm):
            return gated.layer_norm(x, tuple(module.normalized_shape), weight, bias, module.eps)
        if isinstance(module, nn.GroupNorm):
            return gated.group_norm(x, module.num_groups, weight, bias, module.eps)
        if isinstance(module, RMS_NORM_TYPES):
            eps = torch.finfo(x.dtype).eps if module.eps is None else module.eps
            return gated.layer_norm(
                x, tuple(module.normalized_shape), weight, None, eps, centre=False
            )
        if module.track_running_stats:  # InstanceNorm with running statistics
            return _running_norm(gated, module, x)
        return gated.instance_norm(x, weight, bias, module.eps)


class MaxPoolRule(CTCHook):
    """Max pooling: every copy takes the values at the original pass's argmax positions."""

    def before(self, state: _PassState, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`GatedPass.max_pool_switches` with the module's pooling settings."""
        if getattr(module, "return_indices", False):
            raise UnsupportedOperationError(
                type(module).__name__, "returning pooling indices to the model is not supported"
            )
        with_indices = copy.copy(module)  # shallow: same settings, no hooks are called
        with_indices.return_indices = True
        return state.gated.max_pool_switches(x, with_indices.forward)


#: Modules with a weight and a bias: the bias is shared among the copies.
AFFINE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
#: Max poolings: every copy takes the values at the gate copy's maxima (the switches).
MAX_POOL_TYPES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
#: Squashing activations: their outputs are gate tensors that may multiply the signal.
SQUASHING_TYPES: tuple[type[nn.Module], ...] = (nn.Hardtanh, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh)
#: ``nn.RMSNorm`` where this torch has it.
RMS_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
#: Normalisations whose statistics come from the input (`NormRule`): each copy is centred on
#: its own mean and divided by the gate copy's standard deviation.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    *RMS_NORM_TYPES,
)
#: Smooth activations: each copy is scaled by the gate copy's ``f(z) / z``.
RESCALE_TYPES: tuple[type[nn.Module], ...] = (
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Mish,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Softplus,
    nn.Hardtanh,  # ReLU6 too
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
)


_STANDARD_FORWARDS = frozenset(
    cls.forward
    for cls in (
        *AFFINE_TYPES,
        *BATCH_NORM_TYPES,
        *MAX_POOL_TYPES,
        *RESCALE_TYPES,
        *NORM_TYPES,
        nn.ReLU,
        nn.ReLU6,
        nn.LeakyReLU,
        nn.PReLU,
    )
)


def has_standard_forward(module: nn.Module) -> bool:
    """Whether ``module`` computes what its PyTorch base class computes.

    A subclass that overrides ``forward`` (or an instance given its own ``forward``) may do
    more than its base class; a CTC rule for the base class would then be wrong for it, so the
    composite leaves such modules to the guard, which sees every operation they call.
    """
    return "forward" not in module.__dict__ and type(module).forward in _STANDARD_FORWARDS


def ctc_layer_map() -> list[tuple[tuple[type[nn.Module], ...], Hook]]:
    """The module types of the CTC composite and their rules (a Zennit layer map)."""
    return [
        (AFFINE_TYPES, AffineRule()),
        (BATCH_NORM_TYPES, BatchNormRule()),
        ((nn.ReLU,), ReLURule()),
        ((nn.LeakyReLU, nn.PReLU), LeakyReLURule()),
        (RESCALE_TYPES, RescaleRule()),
        (MAX_POOL_TYPES, MaxPoolRule()),
        (NORM_TYPES, NormRule()),
    ]


# ---------------------------------------------------------------------------- composite
#: The per-module hook tables of torch, and the tables keyed by the same handle ids.
_HOOK_TABLES = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
_HOOK_ID_TABLES = (
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def remove_hooks_of(model: nn.Module, hooks: Sequence[object]) -> None:
    """Remove from every module of ``model`` the hooks that are methods of ``hooks``' objects.

    For hooks registered without a handle to remove them by: a registration interrupted
    between two of its calls.
    """
    owners = {id(hook) for hook in hooks}
    for module in model.modules():
        for table in _HOOK_TABLES:
            entries = getattr(module, table, None) or {}
            for key, function in list(entries.items()):
                if id(getattr(function, "__self__", None)) in owners:
                    del entries[key]
                    for id_table in _HOOK_ID_TABLES:
                        (getattr(module, id_table, None) or {}).pop(key, None)


@register_composite("ctc")
class CTCComposite(LayerMapComposite):
    """The CTC rules as a Zennit composite.

    Like Zennit's composites (``EpsilonPlus(epsilon, stabilizer, layer_map, ..., canonizers)``) it
    holds rules and their settings only, no data: the feature mask belongs to the
    [`CTCAttributor`][ctc_plugin.CTCAttributor] (its constructor, or each call), which builds the
    batch of feature copies CTC propagates through the composite's hooks. Use it with Zennit's
    canonizers and ``MixedComposite``:

        composite = CTCComposite(bias_sharing="proportional",
                                 canonizers=[SequentialMergeBatchNorm()])
        with CTCAttributor(model, composite, feature_mask=segments) as attributor:
            output, relevance = attributor(images, one_hot)

    While the composite is registered and no CTC pass runs, the model's forward computes exactly
    what it computes without the rules (canonizers change the model: zennit 0.5.1's BatchNorm
    merge moves the output by its ``eps``). CTC relevance is not a modified gradient, so a
    gradient through the hooked model (Zennit's ``Gradient``, ``SmoothGrad``,
    ``IntegratedGradients``, or ``output.backward()`` inside ``composite.context(model)``) raises
    [`CompositeOutsideAttributorError`][ctc_plugin.ctc.errors.CompositeOutsideAttributorError]
    instead of returning the plain gradient; Zennit's ``Occlusion`` ignores composites, this one
    included. Registered in Zennit's registry as ``"ctc"``.

    Args:
        bias_sharing: ``"proportional"`` (the default), ``"reference"`` or ``"none"``, as in
            [`CTC`][ctc_plugin.CTC].
        layer_map: Extra ``(module types, hook)`` pairs matched before the CTC rules. Zennit's
            own rules (``Epsilon``, ``ZPlus``, ...), here or before this composite in a
            ``MixedComposite``, do not act in the CTC pass (it is not a gradient): the
            operations of a module they take are seen by the guard, which applies the same CTC
            rules (``functional="intercept"``) or refuses them (``"raise"``). A CTC rule is put
            only on modules that compute what their PyTorch class computes
            ([`has_standard_forward`][ctc_plugin.ctc.composite.has_standard_forward]); others
            are left to the guard too.
        canonizers: Zennit canonizers applied before the hooks are registered; `remove` (the
            end of ``composite.context(model)``) puts the model's own parameters and buffers
            back. Inside a ``MixedComposite``, the ``MixedComposite``'s own ``context`` is
            Zennit's, which zennit 1.0 ends with the merged BatchNorms' zero biases still
            registered; a [`CTCAttributor`][ctc_plugin.CTCAttributor] puts the model's tensors
            back whatever composite it holds.

    Raises:
        ValueError: An unknown ``bias_sharing``.
        TypeError: A tensor where ``bias_sharing`` goes (a feature mask: give it to the
            attributor), or a ``layer_map`` entry that is no ``(module types, rule)`` pair (a
            canonizer given second: ``canonizers=`` is the third argument).
    """

    #: Its rules give no gradient relevance (they act only in `CTCAttributor`'s pass): read by
    #: [`check_gives_relevance`][ctc_plugin.relevance.check_gives_relevance].
    gives_relevance = False

    def __init__(
        self,
        bias_sharing: BiasSharingMode = DEFAULT_BIAS_SHARING,
        layer_map: Sequence[tuple[tuple[type[nn.Module], ...], Hook]] | None = None,
        canonizers: Sequence[Canonizer] | None = None,
    ) -> None:
        if isinstance(bias_sharing, (torch.Tensor, tuple, list)):
            raise TypeError(
                "CTCComposite holds rules, not data: its first argument is bias_sharing "
                f"({type(bias_sharing).__name__} given). Give the feature mask to the attributor: "
                "CTCAttributor(model, composite, feature_mask=mask), or attributor(x, "
                "attr_output, feature_mask=mask)"
            )
        check_mode(bias_sharing)
        own_rules = _checked_layer_map(layer_map)
        self.bias_sharing = bias_sharing
        #: The model, its tensors before and after registration (`register`), or ``None``.
        self._own_tensors: tuple[nn.Module, RegisteredTensors, RegisteredTensors] | None = None
        super().__init__(
            layer_map=[*own_rules, *ctc_layer_map()],
            canonizers=list(canonizers) if canonizers is not None else None,
        )

    def register(self, module: nn.Module) -> None:
        """Apply the canonizers and register the hooks (Zennit's ``register``), undoably.

        The model's parameters and buffers are recorded first, and `remove` registers them
        again: zennit 1.0's BatchNorm-merging canonizers leave instance attributes that shadow
        them and a zero bias registered on layers without one (an extra entry in
        ``parameters()`` and ``state_dict()``). What the user changes inside the context stays
        (``model.double()``, a parameter assigned): a name whose tensor changed after the
        registration keeps the new one. A registration that fails halfway (a canonizer that
        raises) removes what it registered before the exception leaves, since
        ``with composite.context(model)`` never reaches its end then.

        Raises:
            ValueError: The canonizers apply one canonizer twice
                ([`check_canonizers`][ctc_plugin.canonizers.check_canonizers]).
            RuntimeError: Another composite is registered on the model (an open ``with``
                block of its), or, where this composite has canonizers, a canonizer is applied
                (also one applied by hand): the two would stack their hooks, and Zennit cannot
                take their canonizers off one another. Nothing is registered.
        """
        # once no other call of this package uses the model (a CTC call in another thread
        # would see its BatchNorms merged halfway), as a CTCAttributor's registration, in the
        # order every caller takes them (model, composite). A model it is registered on now is
        # let go of (`remove`, which holds that model) before this one is taken: holding both,
        # two composites moved onto each other's models in two threads waited for each other
        own = self._own_tensors
        if own is not None and own[0] is not module:
            self.remove()
        with exclusive(module), exclusive(self):
            self.remove()
            check_canonizers(self, module)
            refuse_a_second_composite(module, canonizes=bool(self.canonizers))
            saved = registered_tensors(module)
            try:
                super().register(module)
            except BaseException:
                # a hook cut off inside its own register (Ctrl-C between Zennit's two
                # registrations) returned no handles: its hooks are found on the modules
                cut_off = list(self.hook_refs)
                remove_handles(self)
                remove_hooks_of(module, cut_off)
                restore_tensors(saved)
                raise
            self._own_tensors = (module, saved, registered_tensors(module))

    def remove(self) -> None:
        """Remove the hooks and canonizers; put the model's own tensors back (see `register`).

        Every hook and canonizer is removed, the last registered first, also when one of them
        raises ([`remove_handles`][ctc_plugin.canonizers.remove_handles]). Waits, as
        `register`, until no other call of this package uses the model: the model it is
        registered on once it holds that model (another thread may have registered it
        elsewhere meanwhile).
        """
        while True:  # the model held is the one registered on once the locks are taken
            own = self._own_tensors
            with exclusive(own[0] if own is not None else None), exclusive(self):
                if self._own_tensors is not own:  # registered elsewhere while waiting
                    continue
                self._own_tensors = None
                now = registered_tensors(own[0]) if own is not None else None
                try:
                    remove_handles(self)
                finally:
                    if own is not None:
                        _, saved, registered = own
                        restore_tensors(saved, registered, now)
                return

    def context(self, module: nn.Module) -> CompositeContext:
        """Register the composite on ``module`` for a ``with`` block (Zennit's ``context``).

        A block inside an open one of this composite on the same module (its ``context``, or a
        [`CTCAttributor`][ctc_plugin.CTCAttributor]'s ``with``) keeps that registration and leaves
        it in place when it ends; in Zennit the inner block's end removes the outer's hooks and
        canonizers. The returned object is Zennit's ``CompositeContext``, reusable as Zennit's.
        """
        return _KeepingContext(module, self)

    def mapping(self, ctx: dict, name: str, module: nn.Module) -> Hook | None:
        """The hook for ``module``: the first matching entry; no CTC rule for custom forwards."""
        hook = super().mapping(ctx, name, module)
        if isinstance(hook, CTCHook) and not has_standard_forward(module):
            return None
        return hook


class _KeepingContext(CompositeContext):
    """Zennit's ``CompositeContext`` that leaves an open registration on the module as it is."""

    def __enter__(self) -> nn.Module:
        own = self.composite._own_tensors
        self.kept = own is not None and own[0] is self.module
        return self.module if self.kept else super().__enter__()

    def __exit__(self, *exc_info: object) -> bool:
        if self.kept:
            self.kept = False
            return False
        return super().__exit__(*exc_info)


def _checked_layer_map(layer_map: Any) -> list[Any]:
    """``layer_map``'s entries as a list (read once: it may be a generator), each checked.

    Raises:
        TypeError: An entry that is no ``(module types, Zennit hook)`` pair (a tuple or list of
            two), naming it, and the keyword for canonizers (the third argument, easily given
            second).
    """
    entries = list(layer_map or [])
    for entry in entries:
        if isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[1], Hook):
            continue
        hint = (
            ": it is a canonizer; give canonizers by keyword, CTCComposite(canonizers=[...])"
            if isinstance(entry, Canonizer)
            else ""
        )
        raise TypeError(
            "layer_map takes (module types, Zennit rule) pairs, such as "
            f"((torch.nn.Conv2d,), zennit.rules.Epsilon()); got {type(entry).__name__}{hint}"
        )
    return entries


def find_ctc_composites(composite: Any) -> list[CTCComposite]:
    """Every `CTCComposite` in ``composite`` (itself, or inside a ``MixedComposite``)."""
    return [held for held in held_composites(composite) if isinstance(held, CTCComposite)]


# ---------------------------------------------------------------------------- guard
class _Refused(Exception):
    """Raised by `_LinearOnlyPass` when an operation needs a rule."""


@dataclass
class _LinearOnlyPass(GatedPass):
    """A view of a pass that allows operations linear in the signal and refuses rules."""

    def affine(
        self, bias_free: torch.Tensor, bias: torch.Tensor | None, foldable: bool = False
    ) -> torch.Tensor:
        """Tag a bias-free result; refuse a bias."""
        if bias is None:
            return super().affine(bias_free, None)
        raise _Refused("it adds a bias or constant that CTC shares among the features")

    def fold_batch_norm(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Refuse."""
        raise _Refused("it is a BatchNorm, an affine map whose shift CTC shares")

    def _refuse_gate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise _Refused("it is a nonlinearity that CTC replaces by a gate of the original pass")

    relu_gate = leaky_relu_gate = rescale_gate = max_pool_switches = max_switches = _refuse_gate
    normalise = gate_product = full_pass_gate = broadcast_gate = statistic = _refuse_gate


class GuardMode(CTCMode):
    """Watches the operations of a hooked CTC pass that happen outside every hooked module.

    Inside a module that has a CTC hook nothing is touched (its hook applies the rule).
    Outside, operations linear in the signal (additions of propagated tensors, concatenation,
    reshaping, average pooling, ...) are applied and their results tagged. Operations that need
    a rule (a functional ``F.relu``, a convolution of a module without a CTC hook, a constant
    added to the signal, ...) are routed to the same rules as in
    [`CTCMode`][ctc_plugin.ctc.attribution.CTCMode] with ``functional="intercept"``, or raise
    [`UnsupportedOperationError`][ctc_plugin.UnsupportedOperationError] naming them with
    ``functional="raise"``.

    Args:
        state: The pass state the hooks share.
        functional: ``"intercept"`` or ``"raise"``.
        model: The model, to name modules in errors.
    """

    def __init__(
        self, state: _PassState, functional: FunctionalPolicy = "intercept", model: Any = None
    ) -> None:
        if functional not in FUNCTIONAL_POLICIES:
            raise ValueError(
                f"functional must be one of {', '.join(map(repr, FUNCTIONAL_POLICIES))}; "
                f"got {functional!r}"
            )
        super().__init__(state.gated, model)
        self.state = state
        self.functional = functional
        self._linear_only = _LinearOnlyPass(
            layout=state.gated.layout,
            sharing=state.gated.sharing,
            token=state.gated.token,
            exits=state.gated.exits,  # calls leaving torch are named from the real pass
        )

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple = (),
        kwargs: dict | None = None,
    ) -> Any:
        """Leave hooked modules alone; route or refuse everything else."""
        kwargs = kwargs or {}
        if self.state.depth > 0:
            return func(*args, **kwargs)
        if self.functional == "intercept":
            return super().__torch_function__(func, types, args, kwargs)
        self.gated_pass = self._linear_only
        try:
            return super().__torch_function__(func, types, args, kwargs)
        except _Refused as refusal:
            module = running_module_object()
            rule = _other_rule(module)
            if rule is not None:
                reason = (
                    f"{refusal}, and its module has the Zennit rule {type(rule).__name__} (from "
                    "the composite's layer_map or a composite before it), which does not act in "
                    "a CTC pass. Use CTCAttributor(..., functional='intercept'), which applies "
                    "the CTC rule to it, or leave the module to the CTC rules"
                )
            else:
                reason = (
                    f"{refusal} and it runs outside every module with a CTC hook. Use "
                    "CTCAttributor(..., functional='intercept') or the Captum entry point "
                    "ctc_plugin.CTC, which route functional calls to the CTC rules, or, where "
                    "a module of the composite computes the same, replace the call by that "
                    "module (a canonizer such as zennit.torchvision.ResNetCanonizer, or nn.ReLU "
                    "instead of F.relu; modules without a CTC hook, such as nn.LSTM, need "
                    "'intercept')"
                )
            raise UnsupportedOperationError(
                operation_name(func), reason, running_module(self.model)
            ) from None
        finally:
            self.gated_pass = self.state.gated


def _other_rule(module: nn.Module | None) -> Hook | None:
    """A Zennit rule other than CTC's registered on ``module`` (its first), or ``None``."""
    if module is None:
        return None
    return next((rule for rule in rule_hooks(module) if not isinstance(rule, CTCHook)), None)


@contextmanager
def hooked_pass(
    gated: GatedPass, functional: FunctionalPolicy = "intercept", model: Any = None
) -> Iterator[Any]:
    """Run a CTC pass through the CTC hooks registered on a model.

    Inside the context, a forward of a model carrying [`CTCComposite`][ctc_plugin.CTCComposite]
    hooks on a batch tagged by ``gated`` is a CTC pass. Biases taken off modules are put back when
    the context ends, also on an exception.

    Args:
        gated: The rules and state of the pass.
        functional: What the guard does with rule-needing operations outside hooked modules.
        model: The model, to name modules in errors.

    Yields:
        The pass state (``hooked_calls`` counts the module calls the hooks handled).
    """
    state = _PassState(gated=gated, model=model)
    guard = GuardMode(state, functional, model)
    token = _ACTIVE.set(state)
    try:
        with guard:
            yield state
    finally:
        _ACTIVE.reset(token)
        state.restore_all()


__all__ = [
    "AFFINE_TYPES",
    "FUNCTIONAL_POLICIES",
    "MAX_POOL_TYPES",
    "NORM_TYPES",
    "RESCALE_TYPES",
    "SQUASHING_TYPES",
    "AffineRule",
    "BatchNormRule",
    "CTCComposite",
    "CTCHook",
    "GuardMode",
    "LeakyReLURule",
    "MaxPoolRule",
    "NormRule",
    "ReLURule",
    "RescaleRule",
    "ctc_layer_map",
    "find_ctc_composites",
    "has_standard_forward",
    "hooked_pass",
]
