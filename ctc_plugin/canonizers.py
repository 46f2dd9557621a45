"""Zennit canonizers and composites that work with every supported zennit and torch version.

- zennit 1.0 turns a BatchNorm merged into the preceding layer into the identity by setting its
  ``eps`` to 0; torch 2.11 rejects ``eps = 0`` in ``batch_norm`` even in eval mode ("batch_norm eps
  must be positive"), so the merged model fails there (torch 2.14 rejects it only in training, and
  zennit 0.5 leaves ``eps`` alone):
  [`PositiveEpsMergeBatchNorm`][ctc_plugin.canonizers.PositiveEpsMergeBatchNorm].
- zennit 1.0 swaps a module's tensors with ``object.__setattr__`` (an instance attribute that
  shadows the registered parameter); with a rule that modifies parameters (``AlphaBeta``) on a
  merged layer, the merged weights stay registered after the canonizer is removed, so the model's
  ``state_dict`` and ``parameters()`` are no longer its own:
  [`tensors_restored`][ctc_plugin.canonizers.tensors_restored].
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import (
    AttributeCanonizer,
    Canonizer,
    CompositeCanonizer,
    NamedMergeBatchNorm,
    SequentialMergeBatchNorm,
)
from zennit.core import Composite, Hook, RemovableHandleList, collect_leaves

from ctc_plugin.batchnorm import BATCH_NORM_TYPES
from ctc_plugin.concurrency import exclusive
from ctc_plugin.module_paths import named_modules_as_given

#: The merged BatchNorm's ``eps`` instead of 0: ``1 + TINY_EPS`` is exactly 1 in float16, 32
#: and 64, so the BatchNorm stays exactly the identity, and torch accepts it.
TINY_EPS = 1e-30


class PositiveEpsMergeBatchNorm(SequentialMergeBatchNorm):
    """Zennit's ``SequentialMergeBatchNorm`` that never leaves a BatchNorm with ``eps = 0``.

    Merges exactly as Zennit does; where Zennit set the merged BatchNorm's ``eps`` to 0 it is set to
    [`TINY_EPS`][ctc_plugin.canonizers.TINY_EPS] instead (the same identity, accepted by every
    torch version). ``remove()`` restores the original ``eps`` as before.
    """

    def register(self, linears, batch_norm) -> None:  # noqa: ANN001 (zennit's signature)
        """Merge ``batch_norm`` into ``linears`` (Zennit's merge) with a positive ``eps``."""
        super().register(linears, batch_norm)
        _positive_eps(batch_norm)


@contextmanager
def batch_norms_valid(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every BatchNorm of ``model`` with ``eps = 0`` has `TINY_EPS`.

    For canonizers applied by others (a composite's, when the block starts). On exit the
    BatchNorms changed get ``eps = 0`` back; removing a zennit >= 1.0 canonizer afterwards then
    restores the original ``eps`` as before.
    """
    changed = [
        module
        for module in model.modules()
        if isinstance(module, BATCH_NORM_TYPES) and module.eps == 0
    ]
    for module in changed:
        _positive_eps(module)
    try:
        yield model
    finally:
        for module in changed:
            object.__setattr__(module, "eps", 0.0)


def _positive_eps(batch_norm: nn.Module) -> None:
    if batch_norm.eps == 0:  # zennit >= 1.0; its remove() restores the original eps
        object.__setattr__(batch_norm, "eps", TINY_EPS)


@contextmanager
def tensors_restored(model: nn.Module) -> Iterator[nn.Module]:
    """Put every parameter and buffer of ``model`` back as registered on entry, on exit.

    The same tensor objects are registered again under their names and any instance attribute
    that shadows them is dropped, whatever a composite or canonizer did in between (also when
    the block raises); instance attributes that shadowed them on entry (a canonizer applied by
    hand: zennit 1.0 merges a BatchNorm into attributes over its parameters) are put back.
    Attributes that are not tensors (such as ``eps``) are not touched.
    """
    saved = registered_tensors(model)
    try:
        yield model
    finally:
        restore_tensors(saved)


#: The registries of a module's tensors: its parameters and its buffers.
_REGISTRIES = ("_parameters", "_buffers")

#: The key of `RegisteredTensors` that holds the instance attributes shadowing those names.
_SHADOWS = "shadows"

#: The tensors registered on each module of a model: ``(module, {registry: {name: tensor}})``
#: for both `_REGISTRIES`, and under `_SHADOWS` the instance attributes over those names
#: (`registered_tensors`).
RegisteredTensors = list[tuple[nn.Module, dict[str, dict[str, Any]]]]


def registered_tensors(model: nn.Module) -> RegisteredTensors:
    """The parameters and buffers registered on every module of ``model`` now, by name.

    With them, the instance attributes that shadow those names.
    """
    saved = []
    for module in model.modules():
        entry = {registry: dict(getattr(module, registry)) for registry in _REGISTRIES}
        names = [name for registry in _REGISTRIES for name in entry[registry]]
        entry[_SHADOWS] = {name: vars(module)[name] for name in names if name in vars(module)}
        saved.append((module, entry))
    return saved


def restore_tensors(
    saved: RegisteredTensors,
    registered: RegisteredTensors | None = None,
    now: RegisteredTensors | None = None,
) -> None:
    """Register ``saved``'s tensors again, with the instance attributes that shadowed them then.

    With ``registered`` (taken when a composite had just registered) and ``now`` (taken before
    it is removed), a name whose tensor changed between the two keeps ``now``'s: that is the
    user's change inside the composite's context (``model.double()`` replaces the buffers,
    ``load_state_dict(..., assign=True)`` the parameters), not the composite's.
    """
    for index, (module, originals) in enumerate(saved):
        unchanged = []  # names registered as on entry, whose shadows on entry come back
        for registry_name in _REGISTRIES:
            original = kept = originals[registry_name]
            if registered is not None and now is not None:
                then, current = registered[index][1][registry_name], now[index][1][registry_name]
                kept = _with_changes(original, then, current)
            registry = getattr(module, registry_name)
            for name in set(registry) | set(kept):
                module.__dict__.pop(name, None)
            registry.clear()
            registry.update(kept)
            unchanged += [name for name in kept if kept[name] is original.get(name)]
        for name in unchanged:
            if name in originals[_SHADOWS]:
                module.__dict__[name] = originals[_SHADOWS][name]


def _with_changes(original: dict, then: dict, current: dict) -> dict:
    """``original`` with every name whose tensor changed from ``then`` to ``current`` as now."""
    kept = dict(original)
    for name in then.keys() | current.keys():
        if then.get(name) is not current.get(name):
            if name in current:
                kept[name] = current[name]
            else:
                kept.pop(name, None)
    return kept


#: Canonizer classes that act only where their arguments say (module names, a function), so
#: two of them may well touch different modules.
TARGETED_CANONIZERS = (AttributeCanonizer, CompositeCanonizer, NamedMergeBatchNorm)


def check_canonizers(composite: Composite, model: nn.Module | None = None) -> None:
    """Refuse a composite that would apply the same canonizer twice.

    A ``MixedComposite`` joins the canonizers of its composites, so
    ``MixedComposite([CTCComposite(canonizers=[ResNetCanonizer()]),
    EpsilonPlusFlat(canonizers=[ResNetCanonizer()])])`` merges every BatchNorm twice, and so does
    ``canonizers=[ResNetCanonizer(), SequentialMergeBatchNorm()]`` (``ResNetCanonizer`` holds a
    ``SequentialMergeBatchNorm``); Zennit cannot undo that (its ``remove`` fails halfway and
    leaves hooks and merged weights on the model). A subclass counts as its base
    (``PositiveEpsMergeBatchNorm`` beside Zennit's ``SequentialMergeBatchNorm`` merges twice too).
    Classes in [`TARGETED_CANONIZERS`][ctc_plugin.canonizers.TARGETED_CANONIZERS] themselves may
    repeat; their subclasses (``ResNetBasicBlockCanonizer``) may not.

    With ``model``, canonizers that would change the same module of it are refused too
    ([`check_canonizers_on`][ctc_plugin.canonizers.check_canonizers_on]): two
    ``NamedMergeBatchNorm`` naming one BatchNorm, one beside a ``SequentialMergeBatchNorm`` that
    merges that BatchNorm as well, two ``AttributeCanonizer`` setting one module's ``forward``.

    Raises:
        ValueError: Naming the canonizer class applied twice (or the module changed twice),
            what holds each, and what to do.
    """
    # the composite that holds each canonizer given (the innermost: a MixedComposite's own
    # list repeats its composites')
    holder = {
        id(given): inner
        for inner in held_composites(composite)
        for given in getattr(inner, "canonizers", None) or ()
    }
    seen: list[tuple[type, Canonizer]] = []
    for canonizer, given in _flat_canonizers(getattr(composite, "canonizers", None) or ()):
        kind = type(canonizer)
        if kind in TARGETED_CANONIZERS:
            continue
        twin = next((s for s in seen if issubclass(kind, s[0]) or issubclass(s[0], kind)), None)
        if twin is None:
            seen.append((kind, given))
            continue
        name = kind.__name__ if twin[0] is kind else f"{kind.__name__} and {twin[0].__name__}"
        first, second = type(twin[1]).__name__, type(given).__name__
        where = f"two {first}" if first == second else f"{first} and {second}"
        # joined by a MixedComposite: given to two of its composites (one instance to both, or
        # one each)
        joined = bool(getattr(composite, "composites", None)) and (
            given is twin[1] or holder.get(id(given)) is not holder.get(id(twin[1]))
        )
        raise ValueError(
            f"the composite applies {name} twice, from {where}"
            + (" (a MixedComposite joins the canonizers of its composites)" if joined else "")
            + ": Zennit would canonize the model twice and could not undo it; give each "
            "canonizer once (ResNetCanonizer and VGGCanonizer hold a SequentialMergeBatchNorm "
            "already)"
            + (", to one of the composites or to the MixedComposite itself" if joined else "")
        )
    if model is not None:
        check_canonizers_on(composite, model)


def check_canonizers_on(composite: Composite, model: nn.Module) -> None:
    """Refuse canonizers of ``composite`` that would change the same module of ``model`` twice.

    What each canonizer changes is read without applying it: the BatchNorms a
    ``NamedMergeBatchNorm`` names, those a ``SequentialMergeBatchNorm`` (or a subclass, also inside
    ``ResNetCanonizer``) finds right after a linear layer by Zennit's rule, and the attributes an
    ``AttributeCanonizer``'s ``attribute_map`` sets on each module. Zennit would apply both, and
    its removal puts back what the second one saw, which is the first one's change: the model
    stays merged (or loses its own ``forward``) after the block.

    Raises:
        ValueError: Naming the module, the change and the two canonizers.
    """
    names = {
        id(module): name or type(module).__name__ for name, module in named_modules_as_given(model)
    }
    first: dict[tuple[int, str], Canonizer] = {}
    for canonizer, given in _flat_canonizers(getattr(composite, "canonizers", None) or ()):
        for module, change in _changes(canonizer, model):
            key = (id(module), change)
            if key not in first:
                first[key] = given
                continue
            earlier, later = type(first[key]).__name__, type(given).__name__
            where = f"two {earlier}" if earlier == later else f"{earlier} and {later}"
            if first[key] is given:
                where = f"one {earlier} given twice or naming it twice"
            what = "merge BatchNorm" if change == _MERGE else f"set {change!r} of module"
            raise ValueError(
                f"the composite's canonizers {what} {names.get(id(module))!r} twice, from "
                f"{where}: Zennit would change it twice and could not undo it; give each "
                "module to one canonizer (ResNetCanonizer and VGGCanonizer merge every BatchNorm "
                "right after a linear layer already)"
            )


#: The change `_changes` reports for a BatchNorm merged into the layer before it.
_MERGE = "merge"


def _changes(canonizer: Canonizer, model: nn.Module) -> Iterator[tuple[nn.Module, str]]:
    """The modules of ``model`` that ``canonizer`` changes, each with what it changes."""
    if isinstance(canonizer, NamedMergeBatchNorm):
        modules = dict(model.named_modules())
        for _, batch_norm in canonizer.name_map:
            if batch_norm in modules:
                yield modules[batch_norm], _MERGE
    elif isinstance(canonizer, SequentialMergeBatchNorm):
        last = None  # Zennit's rule: a BatchNorm right after a linear layer among the leaves
        for leaf in collect_leaves(model):
            if isinstance(last, canonizer.linear_type) and isinstance(
                leaf, canonizer.batch_norm_type
            ):
                yield leaf, _MERGE
            last = leaf
    elif isinstance(canonizer, AttributeCanonizer):
        for name, module in model.named_modules():
            for attribute in canonizer.attribute_map(name, module) or ():
                yield module, attribute


def remove_composite(composite: Composite) -> None:
    """Remove ``composite`` from the model it is registered on, every hook and canonizer of it.

    Its handles are removed by [`remove_handles`][ctc_plugin.canonizers.remove_handles] (all of
    them, the last registered first), then the composite's own ``remove`` runs for what it keeps
    besides (a [`CTCComposite`][ctc_plugin.CTCComposite] puts the model's tensors back).

    Raises:
        Exception: The first one a handle's removal raised, after every handle is removed and
            the composite's own ``remove`` has run.
    """
    try:
        remove_handles(composite)
    finally:
        composite.remove()


def remove_handles(composite: Composite) -> None:
    """Remove every hook and canonizer handle of ``composite``, the last registered first.

    Zennit's own ``remove`` goes through them in the order they were registered and stops at
    the first that raises (an ``AttributeCanonizer`` whose attribute is gone), leaving every
    later hook on the model. Here each is removed whatever the others do, in the reverse order
    of registration (each canonizer puts back what it found), and the first exception is raised
    once all are removed.

    Raises:
        Exception: The first one a handle's removal raised, after every handle is removed.
    """
    handles = getattr(composite, "handles", None) or []
    failure: BaseException | None = None
    for handle in reversed(list(handles)):
        try:
            handle.remove()
        except BaseException as error:  # noqa: BLE001 (raised below, once all are removed)
            failure = failure or error
    composite.handles = RemovableHandleList()
    hook_refs = getattr(composite, "hook_refs", None)
    if hook_refs is not None:
        hook_refs.clear()
    if failure is not None:
        raise failure


def registered_on(composite: Composite, model: nn.Module) -> bool | None:
    """Whether ``composite`` is registered on ``model``; ``None`` when it is registered nowhere.

    A registration is on ``model`` when the composite's rules (its ``hook_refs``) are hooked on a
    module of it, or, for one of canonizers alone, when a module a canonizer changed (a merged
    BatchNorm or layer, a module whose attributes it set) is one of ``model``'s; where neither
    says (canonizers of another kind), it counts as on ``model``.
    """
    handles = getattr(composite, "handles", None)
    if not handles:
        return None
    refs = getattr(composite, "hook_refs", None)
    if refs:
        return any(hook in refs for module in model.modules() for hook in rule_hooks(module))
    changed = [module for handle in handles for module in _changed_modules(handle)]
    if not changed:
        return True
    own = {id(module) for module in model.modules()}
    return any(id(module) in own for module in changed)


def _changed_modules(canonizer: Any) -> list[nn.Module]:
    """The modules a registered canonizer changed.

    A merge (``MergeBatchNorm``) changed its ``linears`` and ``batch_norm``; an
    ``AttributeCanonizer`` the ``module`` whose attributes it set.
    """
    found = [getattr(canonizer, "batch_norm", None), getattr(canonizer, "module", None)]
    found += list(getattr(canonizer, "linears", None) or ())
    return [module for module in found if isinstance(module, nn.Module)]


def refuse_registered_elsewhere(composite: Composite, model: nn.Module) -> bool | None:
    """Refuse ``composite`` while it is registered on another model than ``model``.

    Returns:
        ``True`` where it is registered on ``model``, ``None`` where nowhere (`registered_on`).

    Raises:
        RuntimeError: Saying where it is registered and what to do; nothing is changed.
    """
    here = registered_on(composite, model)
    if here is False:
        raise RuntimeError(
            f"this {type(composite).__name__} is registered on another model (an open `with "
            "composite.context(other_model)` or attributor block): its rules and canonizers are "
            "there, not on this model; end that block first, or give this model a composite of "
            "its own"
        )
    return here


def _flat_canonizers(
    canonizers: Iterator[Canonizer] | tuple | list, given: Canonizer | None = None
) -> Iterator[tuple[Canonizer, Canonizer]]:
    """Every canonizer of ``canonizers`` (inside a ``CompositeCanonizer`` too) and its holder.

    The holder is the canonizer given that holds it (itself, for one given as it is).
    """
    for canonizer in canonizers:
        holder = given or canonizer
        if isinstance(canonizer, CompositeCanonizer):
            yield from _flat_canonizers(canonizer.canonizers, holder)
        else:
            yield canonizer, holder


def held_composites(composite: Any) -> Iterator[Any]:
    """``composite`` and every composite inside it (a ``MixedComposite``'s ``composites``)."""
    yield composite
    for inner in getattr(composite, "composites", ()) or ():
        yield from held_composites(inner)


@contextmanager
def gradient_attributor(model: nn.Module, composite: Composite) -> Iterator[Gradient]:
    """Zennit's ``Gradient`` attributor on ``model`` under ``composite``, safe on zennit 1.0.

    Inside the block the composite is registered and every BatchNorm its canonizers left with ``eps
    = 0`` has [`TINY_EPS`][ctc_plugin.canonizers.TINY_EPS]
    ([`batch_norms_valid`][ctc_plugin.canonizers.batch_norms_valid]); on exit the composite is
    removed and every parameter and buffer is back as registered
    ([`tensors_restored`][ctc_plugin.canonizers.tensors_restored]). The model and the composite
    are held exclusively meanwhile
    ([`ctc_plugin.concurrency.exclusive`][ctc_plugin.concurrency.exclusive]): other threads' calls
    of this package wait instead of seeing the composite on the model, or removing it from under
    this call.

    A composite registered on ``model`` already (inside the user's ``with
    composite.context(model)``) is used as it is and stays registered when the block ends, as
    with Zennit's own attributors. Another composite registered on ``model`` (the user's ``with
    other.context(model)``, a [`CTCAttributor`][ctc_plugin.CTCAttributor]'s ``with`` block) is
    refused: its rules would act in this gradient too.

    Raises:
        ValueError: The composite applies a canonizer twice
            ([`check_canonizers`][ctc_plugin.canonizers.check_canonizers]).
        RuntimeError: The composite is registered on another model
            ([`refuse_registered_elsewhere`][ctc_plugin.canonizers.refuse_registered_elsewhere]),
            or another composite is registered on ``model`` (where this one has canonizers,
            also a canonizer applied by hand: `refuse_a_second_composite`);
            nothing is registered.
    """
    check_canonizers(composite, model)
    with exclusive(model), exclusive(composite):
        if refuse_registered_elsewhere(composite, model):
            # zennit 1.0's parameter-modifying rules drop the merged tensors that shadow a
            # merged layer's own: they are put back as they were
            with tensors_restored(model), batch_norms_valid(model):
                yield Gradient(model=model, composite=composite)
            return
        # another composite's hooks on the model would act in this gradient too (a mixture of
        # both rules' relevance, silently; a CTC composite's refuse it), and a second canonizer
        # of one Zennit cannot take off the other's
        refuse_a_second_composite(model, bool(getattr(composite, "canonizers", None)))
        with (
            tensors_restored(model),
            composite_registered(composite, model),
            batch_norms_valid(model),
        ):
            yield Gradient(model=model, composite=composite)


@contextmanager
def composite_registered(composite: Composite, model: nn.Module) -> Iterator[Composite]:
    """Register ``composite`` on ``model`` for the block; remove it on exit, also on an exception.

    Unlike ``with composite.context(model)`` or a Zennit attributor's ``with``, a registration
    that fails halfway (a canonizer or a hook that raises) removes what it had registered
    before the exception leaves.
    """
    try:
        composite.register(model)
    except BaseException:
        remove_composite(composite)
        raise
    try:
        yield composite
    finally:
        remove_composite(composite)


def holds_a_composite(model: nn.Module, canonizers: bool = True) -> bool:
    """Whether a Zennit composite (or a canonizer) is registered on ``model``.

    A composite's rules are forward hooks bound to Zennit ``Hook`` objects. Attribute canonizers
    (``ResNetCanonizer``, or a user's ``AttributeCanonizer`` class defined at the top of a
    module) set a module's ``forward`` on the instance, a method of the canonizer's class, which
    a composite of canonizers alone (or a canonizer applied by hand) leaves as its only trace;
    a ``forward`` set there by other code, such as an offloading library's, is not one, and
    neither is one of a canonizer class defined inside a function (its class cannot be found
    from the method). zennit 1.0's ``MergeBatchNorm`` sets the merged tensors as instance
    attributes over the registered parameters and buffers, which no other code does; zennit
    0.5's writes the merged values into them, indistinguishable from an untrained model's (a
    BatchNorm at identity), and is not seen. ``canonizers=False`` looks for the rules only.
    """
    for module in model.modules():
        if canonizers and _canonizer_forward(vars(module).get("forward")):
            return True
        if canonizers and _merged_tensors(module):
            return True
        if any(True for _ in rule_hooks(module)):
            return True
    return False


def _merged_tensors(module: nn.Module) -> bool:
    """Whether an instance attribute holds another tensor than the one registered by its name.

    zennit 1.0's ``remove()`` leaves the registered tensors themselves (and ``None`` over the
    zero bias it registered) as instance attributes: those are no merge.
    """
    for registry in _REGISTRIES:
        for name, registered in getattr(module, registry).items():
            shadow = vars(module).get(name)
            if isinstance(shadow, torch.Tensor) and shadow is not registered:
                return True
    return False


def refuse_a_second_composite(model: nn.Module, canonizes: bool) -> None:
    """Refuse to register a composite where one is registered (`holds_a_composite`).

    Args:
        model: The model.
        canonizes: The composite to register has canonizers (a canonizer applied by hand is
            then refused too; rules alone may join one).

    Raises:
        RuntimeError: Saying what is registered and what to do; nothing is registered.
    """
    if holds_a_composite(model, canonizers=canonizes):
        raise RuntimeError(
            "a Zennit composite is registered on this model already (another composite's "
            "`with composite.context(model)` or a Zennit attributor's `with` block is open"
            + (
                ", or a canonizer was applied by hand: then give the composite no canonizers"
                if canonizes
                else ""
            )
            + "): two composites on one model would stack their hooks, and Zennit cannot take "
            "their canonizers off one another; end that block first, or call outside it"
        )


def rule_hooks(module: nn.Module) -> Iterator[Hook]:
    """The Zennit ``Hook`` objects (rules) whose forward hooks are registered on ``module``."""
    for hooks in (module._forward_pre_hooks, module._forward_hooks):
        for hook in list(hooks.values()):
            owner = getattr(hook, "__self__", None)
            if isinstance(owner, Hook):
                yield owner


def _canonizer_forward(forward: Any) -> bool:
    """Whether an instance's ``forward`` is a method of a Zennit ``Canonizer`` class."""
    function = getattr(forward, "__func__", forward)
    qualname = getattr(function, "__qualname__", "")
    owner = getattr(function, "__globals__", {}).get(qualname.partition(".")[0])
    return isinstance(owner, type) and issubclass(owner, Canonizer)
