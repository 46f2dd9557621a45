"""CTC in Zennit's attributor style: ``output, relevance = attributor(x, attr_output)``.

[`CTCAttributor`][ctc_plugin.CTCAttributor] builds the same batch of feature copies as the Captum
class [`CTC`][ctc_plugin.CTC] and propagates it through the model with the hooks of a
[`CTCComposite`][ctc_plugin.CTCComposite] (a guard routes the operations outside hooked modules to
the same rules). ``relevance`` equals what ``CTC.attribute`` returns for the same target and
features.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import Any

import torch
from zennit.attribution import Attributor
from zennit.core import Composite

from ctc_plugin.canonizers import (
    RegisteredTensors,
    batch_norms_valid,
    check_canonizers,
    refuse_a_second_composite,
    refuse_registered_elsewhere,
    registered_tensors,
    remove_composite,
    restore_tensors,
    tensors_restored,
)
from ctc_plugin.concurrency import PerThread, exclusive
from ctc_plugin.ctc.attribution import CTC
from ctc_plugin.ctc.composite import (
    FUNCTIONAL_POLICIES,
    CTCComposite,
    FunctionalPolicy,
    find_ctc_composites,
    hooked_pass,
)
from ctc_plugin.ctc.errors import CompositeOutsideAttributorError
from ctc_plugin.ctc.pass_output import check_pass_output
from ctc_plugin.ctc.rules import GatedPass
from ctc_plugin.inputs import (
    check_eval_mode,
    check_float_model,
    check_inputs,
    check_model_has_values,
    check_python_model,
    check_takes_images,
    outside_inference_mode,
)
from ctc_plugin.module_paths import unwrapped
from ctc_plugin.module_state import compiled_code_eager
from ctc_plugin.targets import output_not_a_tensor

#: Zennit's output weighting: a tensor shaped like the output (a one-hot row), or a function
#: of the output that returns one.
AttrOutput = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


#: The attributors whose ``with`` block is open on each model, in the order they entered.
_OPEN_BLOCKS: weakref.WeakKeyDictionary[torch.nn.Module, list[CTCAttributor]] = (
    weakref.WeakKeyDictionary()
)


class CTCAttributor(Attributor):
    """CTC as a Zennit attributor.

    ``attr_output`` follows Zennit: a tensor shaped like the model's output, or a function of
    the output returning one. It weights the outputs: a feature's score is
    ``sum_c attr_output[c] * f_c(copy of the feature)`` (with ``"reference"`` sharing then scaled,
    as ``CTC`` scales a class's scores, by the weighted output over the reference full copy's, so
    that mode is not linear in the weighting), and a one-hot ``attr_output`` scores that class
    exactly as ``CTC.attribute(target=class)`` does. Shaped like the output means exactly that:
    one row ``(1, ...)`` serves every example, and class indices are refused (they go to
    ``CTC.attribute(x, target=...)``). With no ``attr_output`` (unlike
    Zennit's gradient attributors, whose default is the whole output) the predicted class is
    scored, as ``CTC.attribute(target=None)`` does.

    Pixel detail inside the features comes after the call:
    [`distribute_within_features`][ctc_plugin.distribute_within_features] splits each feature's
    score by a relevance map, given the call's
    [`feature_scores`][ctc_plugin.CTCAttributor.feature_scores] (run a Zennit composite for it
    outside the ``with`` block: the CTC composite's hooks refuse gradients).

    Threads: one attributor, or several, may serve several threads on one model; each call gives
    exactly what it gives alone. A call changes the model while it runs (it registers the composite
    when it is not registered yet, and takes biases off affine modules during the pass), so it holds
    the model and the composite exclusively: calls of this package on that model wait for it (see
    [`ctc_plugin.concurrency`][ctc_plugin.concurrency]).
    [`feature_scores`][ctc_plugin.CTCAttributor.feature_scores] is kept per thread. Registering the
    composite for a ``with`` block waits for running calls, but from then on until the block ends
    the model carries the composite's hooks and canonizers for every thread; when other threads use
    the model, call the attributor without ``with``. Code outside this package that runs the model
    meanwhile (a plain ``model(x)``) is not coordinated.

    Examples:
        >>> composite = CTCComposite(bias_sharing="proportional")
        >>> with CTCAttributor(model, composite, feature_mask=segments) as attributor:
        ...     output, relevance = attributor(images, torch.eye(10)[[3]])
        >>> scores = attributor.feature_scores
        >>> pixels = distribute_within_features(images, scores, EpsilonPlusFlat(), model=model)

    Args:
        model: The classifier (a ``torch.nn.Module``).
        composite: A [`CTCComposite`][ctc_plugin.CTCComposite], or a Zennit composite
            containing exactly one (e.g. a ``MixedComposite``). Default: ``CTCComposite()``.
        attr_output: Default output weighting (see above).
        feature_mask: Default feature ids in Captum's convention (integer ids broadcastable to
            the input, e.g. (1, 1, H, W)); a call's ``feature_mask`` overrides it.
        segmenter: Makes the feature mask when neither the call nor the attributor gives one
            (default: superpixels, as in ``CTC``). A call runs it before registering the
            composite, so it may take the model's gradient (relevance-guided features, a
            CAM); inside a ``with`` block the composite is registered already, and such a
            segmenter is refused: make the mask before the block and pass it.
        baselines: As in ``CTC.attribute``.
        functional: What happens to operations that need a CTC rule but run outside every
            module with a CTC hook (``F.relu`` in a ``forward``, ``(x - mean) / std``):
            ``"intercept"`` (default) applies the same rules to them; ``"raise"`` refuses them
            by name.

    Raises:
        ValueError: A composite without a ``CTCComposite``, one that applies a canonizer twice
            or whose canonizers would change one module of the model twice
            ([`check_canonizers`][ctc_plugin.canonizers.check_canonizers]), or an unknown
            ``functional``.
    """

    #: The per-feature scores of this thread's last call (`FeatureScores`), or None. Their
    #: ``output`` is the weighted output ``sum_c attr_output[c] * f_c(x)`` and their ``target``
    #: the output whose weight is largest in magnitude (the class of a one-hot
    #: ``attr_output``, and of a negated one, which scores the evidence against it).
    feature_scores = PerThread()
    _call_mask = PerThread()

    def __init__(
        self,
        model: torch.nn.Module,
        composite: Composite | None = None,
        attr_output: AttrOutput | None = None,
        feature_mask: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
        segmenter: Callable[[torch.Tensor], torch.Tensor] | None = None,
        baselines: float | torch.Tensor | None = None,
        functional: FunctionalPolicy = "intercept",
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise ValueError(
                f"model must be a torch.nn.Module (hooks attach to modules); got "
                f"{type(model).__name__}. For any forward function use ctc_plugin.CTC"
            )
        model = unwrapped(model)  # the model inside torch's wrappers: its hooks
        check_python_model(model, "CTCAttributor")  # Zennit's hooks would fail on TorchScript
        composite = CTCComposite() if composite is None else composite
        found = find_ctc_composites(composite)
        if len(found) != 1:
            raise ValueError(
                f"the composite must contain exactly one CTCComposite; found {len(found)} in "
                f"{type(composite).__name__}. Pass CTCComposite(...) or "
                "MixedComposite([CTCComposite(...), ...])"
            )
        check_canonizers(composite, model)
        if functional not in FUNCTIONAL_POLICIES:
            raise ValueError(
                f"functional must be one of {', '.join(map(repr, FUNCTIONAL_POLICIES))}; "
                f"got {functional!r}"
            )
        super().__init__(model=model, composite=composite, attr_output=None)
        self.default_attr_output = attr_output
        self.ctc_composite = found[0]
        self.feature_mask = feature_mask
        self.segmenter = segmenter
        self.baselines = baselines
        self.functional = functional
        #: For each open ``with`` block of this attributor, whether it registered the composite.
        self._block_registrations: list[bool] = []

    @outside_inference_mode
    def __call__(
        self,
        input: torch.Tensor,
        attr_output: AttrOutput | None = None,
        feature_mask: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score the features of ``input``; return the model output and the relevance.

        The composite is registered for the call when it is not yet (Zennit's behaviour), and
        removed afterwards, also on an exception.

        Args:
            input: (N, ...) finite floating-point batch, N >= 1; (N, C, H, W) images when the
                features come from the segmenter.
            attr_output: Output weighting for this call (default: the attributor's).
            feature_mask: Feature ids for this call (default: the attributor's, then the
                segmenter).

        Returns:
            ``(output, relevance)``: the model's output on ``input`` and the CTC attribution
            shaped like ``input``. The per-feature scores of the call are kept in
            [`feature_scores`][ctc_plugin.CTCAttributor.feature_scores].

        Raises:
            TypeError: ``input`` is not one tensor.
            ValueError: ``input`` is not a finite float batch (see
                [`ctc_plugin.inputs.check_inputs`][ctc_plugin.inputs.check_inputs]), or as
                ``CTC.attribute``.
            TrainingModeError: The model has BatchNorm or dropout in training mode.
            RuntimeError: The composite is registered on another model (an open ``with`` block
                there).
        """
        weighting = self.default_attr_output if attr_output is None else attr_output
        with exclusive(self.model), exclusive(self.composite):
            refuse_registered_elsewhere(self.composite, self.model)
            mask = feature_mask if feature_mask is not None else self.feature_mask
            if mask is None and not self.composite.handles:
                # before the composite is registered: a segmenter may take the model's gradient
                # (relevance or a CAM), which must not run through the composite's rules
                check_inputs(input, name="input", tuples=False)
                mask = self._segment(input.detach())
            # registered for this call only: zennit 1.0's canonizers leave instance attributes
            # shadowing the parameters after remove(); the model gets its own tensors back
            restored = nullcontext() if self.composite.handles else tensors_restored(self.model)
            self._call_mask = mask
            try:
                with restored, compiled_code_eager():  # a model compiled in place: its code
                    return super().__call__(
                        input, weighting if weighting is not None else _predicted
                    )
            finally:
                self._call_mask = None

    def _segment(self, images: torch.Tensor) -> torch.Tensor:
        """The segmenter's feature mask of ``images`` (the default one when none was given)."""
        engine = CTC(self.model, segmenter=self.segmenter)
        mask = engine._segment((images,))
        self.segmenter = engine.segmenter  # the default one, made once
        return mask

    def __enter__(self) -> CTCAttributor:
        """Register the composite (once no other call of this package uses the model).

        A block inside an open one of the same composite on this model (a nested ``with`` of
        this attributor, another attributor's on the same composite, ``composite.context(model)``)
        uses that registration and leaves it in place when it ends. Otherwise the model's tensors
        are recorded before the composite is registered and right after, so that the end of this
        block restores the model's own tensors, not a canonized copy of them, and keeps what the
        user changed inside the block (``model.double()``, a parameter assigned), as
        ``composite.context(model)`` does.

        Raises:
            RuntimeError: Another composite is registered on the model, or this composite on
                another model; nothing is registered.
        """
        with exclusive(self.model), exclusive(self.composite):
            nested = bool(refuse_registered_elsewhere(self.composite, self.model))
            if not nested:
                self._refuse_another_composite()
                self._unregister()
                saved = registered_tensors(self.model)
                try:
                    super().__enter__()
                except BaseException:  # a registration that failed halfway: undo what it did
                    remove_composite(self.composite)
                    restore_tensors(saved)
                    raise
                self._restored = (saved, registered_tensors(self.model))
            self._block_registrations.append(not nested)
            _OPEN_BLOCKS.setdefault(self.model, []).append(self)
            return self

    def __exit__(self, *exc_info: object) -> bool:
        """Remove the composite and put the model's own tensors back (see ``__call__``).

        A block that found the composite registered (see `__enter__`) leaves it registered.
        Every hook and canonizer is removed, also when one of them raises
        ([`remove_composite`][ctc_plugin.canonizers.remove_composite]).
        """
        with exclusive(self.model), exclusive(self.composite):
            blocks = _OPEN_BLOCKS.get(self.model, [])
            if self in blocks:
                blocks.remove(self)
            entries = self._block_registrations
            if entries and not entries.pop():
                return False
            self._restore_after(partial(remove_composite, self.composite))
            return super().__exit__(*exc_info)

    def _refuse_another_composite(self) -> None:
        """Refuse a block while another attributor's, with another composite, is open on the model.

        Two composites on one model would stack their hooks (every CTC rule applied twice) and
        their canonizers, which Zennit cannot take off one another: its attribute canonizers
        (``ResNetCanonizer``'s ``forward``) delete what they set, not what was there, so the
        second one's removal breaks the first's.

        Raises:
            RuntimeError: Naming what to do; nothing is registered.
        """
        for other in _OPEN_BLOCKS.get(self.model, []):
            if other is not self and other.composite is not self.composite:
                raise RuntimeError(
                    "another CTCAttributor's with block, with another composite, is open on this "
                    "model: two composites cannot be registered on one model at once (their "
                    "hooks would stack and Zennit's canonizers cannot be taken off one another); "
                    "end that block first, or call that attributor"
                )
        if not self.composite.handles:
            canonizes = bool(getattr(self.composite, "canonizers", None))
            refuse_a_second_composite(self.model, canonizes)

    def _unregister(self) -> None:
        """Remove a registration the composite holds; put back the tensors this attributor saved.

        Zennit's ``register`` removes the composite's previous registration before it applies the
        canonizers again; done here first, the tensors recorded next are the model's own.
        """
        self._restore_after(self.composite.remove)

    def _restore_after(self, remove: Callable[[], None]) -> None:
        """``remove()`` the composite, then the tensors recorded by `__enter__` back on the model.

        A name whose tensor the user replaced inside the block keeps the new one
        (`ctc_plugin.canonizers.restore_tensors`); also when ``remove``
        raises.
        """
        recorded: tuple[RegisteredTensors, RegisteredTensors] | None
        recorded, self._restored = getattr(self, "_restored", None), None
        now = registered_tensors(self.model) if recorded is not None else None
        try:
            remove()
        finally:
            if recorded is not None:
                restore_tensors(*recorded, now)

    def forward(
        self, input: torch.Tensor, attr_output_fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the CTC pass with the registered composite (Zennit's ``Attributor.forward``).

        Raises:
            RuntimeError: The segmenter takes a gradient of the model inside the ``with`` block
                (make the feature mask before the block and pass it).
        """
        check_inputs(input, name="input", tuples=False)
        check_model_has_values(self.model)
        check_float_model(self.model, "CTCAttributor")
        check_eval_mode(self.model)
        check_takes_images(self.model)
        mask = self._call_mask if self._call_mask is not None else self.feature_mask
        if mask is None:  # in a with block: the segmenter runs with the composite registered
            try:
                mask = self._segment(input.detach())
            except CompositeOutsideAttributorError as error:
                raise RuntimeError(
                    "the segmenter takes a gradient of the model, which runs through the "
                    "composite this with block registered: make the feature mask before the "
                    "block and pass it (attributor(x, feature_mask=segmenter(x))), or call the "
                    "attributor outside a with block, where it segments before registering"
                ) from error
        engine = _HookedCTC(
            self.model,
            self.segmenter,
            self.ctc_composite.bias_sharing,
            attr_output_fn,
            self.functional,
        )
        x = input.detach()
        # a BatchNorm that any composite's canonizer left with eps 0 (zennit >= 1.0) gets a
        # positive one while the model runs
        with batch_norms_valid(self.model):
            relevance, scores = engine.attribute(
                x,
                None,
                feature_mask=mask,
                baselines=self.baselines,
                return_feature_scores=True,
            )
        output, weights = engine.model_output, engine.batch_weights
        # by magnitude: a negated one-hot weights its class by -1 and every other by 0
        weighted_most = weights.flatten(1).abs().argmax(dim=1)
        self.feature_scores = dataclasses.replace(scores, target=weighted_most)
        return output, relevance


def _predicted(output: torch.Tensor) -> torch.Tensor:
    """One-hot of the predicted class of each example (the default output weighting)."""
    flat = output.flatten(1)
    return torch.zeros_like(flat).scatter_(1, flat.argmax(dim=1, keepdim=True), 1.0).view_as(output)


class _HookedCTC(CTC):
    """The CTC engine with the hooks of a composite as its rule dispatch.

    The model's output is reduced to one value per copy, ``sum_c w_c f_c``, with the weights
    ``w`` of the whole batch's output (`batch_weights`, computed before the passes; Zennit's
    weighting is a function of the whole output): a group of examples (on a CPU, see
    ``Speedups.copies_per_pass``) takes its rows of them.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        segmenter: Callable[[torch.Tensor], torch.Tensor] | None,
        bias_sharing: Any,
        attr_output_fn: Callable[[torch.Tensor], torch.Tensor],
        functional: FunctionalPolicy,
    ) -> None:
        super().__init__(model, segmenter=segmenter, bias_sharing=bias_sharing)
        self.attr_output_fn = attr_output_fn
        self.functional = functional
        self.model_output: torch.Tensor | None = None  # the model's output on the batch
        self.batch_weights: torch.Tensor | None = None  # `weights_for` that output
        self._group = slice(None)  # the examples of the pass running

    def weights_for(self, output: torch.Tensor) -> torch.Tensor:
        """The output weighting for the model's ``output``, checked against its shape.

        As in Zennit, the weighting is shaped like the output; one row, ``(1, ...)``, also serves
        every example. Nothing else is broadcast: class indices (``tensor([3])``, one per
        example, or a column of them) would otherwise weight every class.

        Raises:
            ValueError: A weighting of another shape, naming the forms that fit.
        """
        weights = torch.as_tensor(self.attr_output_fn(output))
        rows_fit = weights.shape[:1] in ((1,), output.shape[:1])
        if weights.shape[1:] != output.shape[1:] or not rows_fit:
            raise ValueError(
                f"attr_output of shape {tuple(weights.shape)} does not fit the model output of "
                f"shape {tuple(output.shape)}; give a tensor shaped like the output (one row, "
                f"(1, ...), serves every example), e.g. the one-hot torch.eye({output.shape[-1]})"
                "[[class]] or torch.eye(C)[classes] with one class per example, or a function "
                "of the output returning one. Class indices go to ctc_plugin.CTC(model)"
                ".attribute(x, target=...)"
            )
        return weights.to(device=output.device, dtype=output.dtype).expand_as(output)

    def _run_gradient(self, *args: Any) -> None:
        """No gradient shortcut: every mode runs the copies through the hooks."""
        return None

    def _run(self, inputs: tuple, baselines: Any, features: Any, extra: tuple, *args: Any) -> Any:
        """`CTC._run` (the inputs checked), after the model's output on the whole batch.

        The weighting is a function of that output (as in Zennit), computed once, before the
        groups of examples run.
        """
        with torch.no_grad():  # copies: a model may change its input in place (the caller's)
            self.model_output = self.forward_func(*(x.clone() for x in inputs), *extra)
        if not isinstance(self.model_output, torch.Tensor):  # a Hugging Face model's output
            raise output_not_a_tensor(self.model_output, modules_only=True)
        self.batch_weights = self.weights_for(self.model_output)
        return super()._run(inputs, baselines, features, extra, *args)

    def _run_examples(self, inputs: tuple, *args: Any, first_example: int = 0) -> Any:
        """`CTC._run_examples`, knowing which rows of `batch_weights` its examples take."""
        self._group = slice(first_example, first_example + inputs[0].shape[0])
        return super()._run_examples(inputs, *args, first_example=first_example)

    def _forward(self, gated: GatedPass, batch: tuple, extra: tuple) -> torch.Tensor:
        with torch.no_grad():
            with hooked_pass(gated, self.functional, self.forward_func):
                logits = self.forward_func(*batch, *extra)
            logits = check_pass_output(gated, logits, self.forward_func)
        grouped = gated.layout.group(logits)
        weights = self.batch_weights[self._group].to(grouped.dtype)
        weighted = (grouped * weights.unsqueeze(1)).flatten(2).sum(dim=2)
        return weighted.flatten(0, 1).unsqueeze(1)
