"""One home for "a relevance": a tensor, a Zennit composite, a Captum attribution or a callable.

Two parts of the package take a relevance method from the user: pixel-level CTC
([`distribute_within_features`][ctc_plugin.distribute_within_features]) and feature selection
([`relevance_heatmap`][ctc_plugin.features.relevance_heatmap], used by
[`select_features`][ctc_plugin.features.select_features]). Both hand it to
[`compute_relevance`][ctc_plugin.relevance.compute_relevance], so they accept the same forms
and refuse the same things with the same messages:

- a tensor, or a tuple of tensors (one per input): used as given;
- a Zennit composite (``EpsilonPlusFlat()``, ...): Zennit's ``Gradient`` attributor with a one-hot
  ``attr_output`` of the target; needs ``model`` (a ``torch.nn.Module``) and one input tensor;
- a Captum attribution (``InputXGradient(model)``, ``LRP(model)``, ...): called as
  ``method.attribute(inputs, target=target)``;
- a callable ``f(inputs, target)``: called as it is.

``target=None`` means the model's predicted class, found with one forward pass of ``model`` (or
of the Captum method's ``forward_func``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from zennit.core import Composite

from ctc_plugin.canonizers import gradient_attributor, held_composites
from ctc_plugin.concurrency import exclusive, model_of
from ctc_plugin.inputs import check_eval_mode, check_gradient_weights, with_gradients
from ctc_plugin.module_paths import unwrapped
from ctc_plugin.module_state import compiled_code_eager
from ctc_plugin.targets import TargetType, captum_targets, resolve_targets

#: What [`compute_relevance`][ctc_plugin.relevance.compute_relevance] accepts: a tensor (or a
#: tuple, one per input), a Zennit composite, a Captum attribution instance (anything with
#: ``.attribute(inputs, target=...)``) or a callable ``f(inputs, target)``.
Relevance = (
    torch.Tensor
    | tuple[torch.Tensor, ...]
    | Composite
    | Callable[[Any, Any], Any]
    | Any  # a Captum attribution instance
)

FORMS = (
    "a tensor (or a tuple of tensors, one per input), a Zennit composite, a Captum attribution "
    "(an object with .attribute(inputs, target=...)) or a callable f(inputs, target)"
)


@with_gradients  # a gradient pass, also for a caller under no_grad or inference_mode
def run_composite(
    model: torch.nn.Module,
    composite: Composite,
    x: torch.Tensor,
    attr_output: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run Zennit's ``Gradient`` attributor under ``composite``; return ``(output, relevance)``.

    The model and the composite are held exclusively while it runs; the composite's hooks and
    canonizers are removed when the call ends, also on an exception, and every parameter and
    buffer is back as registered; inside the caller's own ``with composite.context(model)`` that
    registration is used and kept (see
    [`gradient_attributor`][ctc_plugin.canonizers.gradient_attributor]).

    Args:
        model: The classifier.
        composite: Any Zennit composite (``EpsilonPlusFlat``, ``EpsilonGammaBox``, ...).
        x: (N, ...) input.
        attr_output: Zennit's output weighting: a tensor shaped like the model's output, or a
            function of the output returning one (see
            [`one_hot_of`][ctc_plugin.relevance.one_hot_of]).

    Returns:
        The model's output and the relevance shaped like ``x``, both detached. The pass runs
        with gradients on, also where the caller turned them off (``torch.no_grad()``,
        ``torch.inference_mode()``).

    Raises:
        ValueError: The composite holds a ``CTCComposite`` (see `check_gives_relevance`), or
            the model's weights are inference tensors (see
            ``ctc_plugin.inputs.check_gradient_weights``).
        TrainingModeError: The model has BatchNorm or dropout in training mode; nothing has
            run (call ``model.eval()``): the pass would update its running statistics, and
            the relevance would come from the batch's statistics or dropped units.
    """
    model = unwrapped(model)  # the model inside torch's wrappers: its hooks
    check_gives_relevance(composite)
    check_eval_mode(model)
    check_gradient_weights(model, "a Zennit composite's relevance")
    x = x.detach().clone() if x.is_inference() else x.detach()  # an ordinary copy: autograd
    # a model compiled in place runs its Python code, which the composite's hooks see
    with gradient_attributor(model, composite) as attributor, compiled_code_eager():
        output, relevance = attributor(x, attr_output)
    return output.detach(), relevance.detach()


def check_gives_relevance(composite: Composite) -> None:
    """Refuse a composite that holds a ``CTCComposite``: its rules give no gradient relevance.

    (A composite says so by ``gives_relevance = False``; this module imports no CTC code.)

    CTC's rules act only in [`CTCAttributor`][ctc_plugin.CTCAttributor]'s pass and refuse a
    gradient; the relevance that places a score inside its feature (or guides the selection of
    features) comes from a gradient method such as LRP.

    Raises:
        ValueError: Naming the composites to use instead.
    """
    if any(getattr(held, "gives_relevance", True) is False for held in held_composites(composite)):
        raise ValueError(
            f"{type(composite).__name__} holds a CTCComposite, which has no relevance of its own: "
            "its rules act only in CTCAttributor's pass (which gives the feature scores) and "
            "refuse gradients. For the relevance, pass a Zennit LRP composite such as "
            "EpsilonPlusFlat() or EpsilonGammaBox(low=..., high=...), a Captum attribution or "
            "a relevance tensor instead"
        )


def one_hot_of(target: TargetType) -> Callable[[torch.Tensor], torch.Tensor]:
    """Zennit ``attr_output`` function: the one-hot of ``target`` shaped like the output.

    ``target`` takes Captum's forms (``None``: the predicted class); it is checked against the
    output's shape, and negative indices count from the end.
    """

    def one_hot(output: torch.Tensor) -> torch.Tensor:
        indices = resolve_targets(target, output.detach())
        flat = torch.zeros_like(output.flatten(1)).scatter_(1, indices.view(-1, 1), 1.0)
        return flat.view_as(output)

    return one_hot


def compute_relevance(
    method: Relevance,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    target: TargetType = None,
    *,
    model: Callable[..., torch.Tensor] | None = None,
) -> Any:
    """Run any accepted relevance method on ``inputs``; return its relevance, detached.

    Args:
        method: A tensor (or a tuple of tensors, one per input), returned as given; a Zennit
            composite (needs a ``torch.nn.Module`` ``model`` and one input tensor); a Captum
            attribution, called as ``method.attribute(inputs, target=target)``; or a callable
            ``method(inputs, target)``.
        inputs: The inputs as the model takes them: a tensor, or a tuple of tensors.
        target: Captum's target forms; ``None``: the model's predicted class (one forward pass of
            ``model``, or of the Captum method's ``forward_func`` when no model is given; a
            callable without a model gets ``None``).
        model: The classifier.

    Returns:
        What the method returned (a tensor or a tuple of tensors), detached; the caller checks
        its shape.

    Raises:
        ValueError: A composite without a ``torch.nn.Module`` model, or with a tuple of inputs.
        TrainingModeError: The model (or the Captum method's ``forward_func``) has BatchNorm or
            dropout in training mode; nothing has run (call ``model.eval()``).
        TypeError: A method of none of the accepted forms, or a model given by position (as
            ``relevance_heatmap`` takes it).
    """
    if isinstance(method, (torch.Tensor, tuple)):
        return method
    misplaced = next((v for v in (inputs, target) if isinstance(v, torch.nn.Module)), None)
    if misplaced is not None:  # relevance_heatmap(method, model, images, ...) takes it second
        raise TypeError(
            "compute_relevance(method, inputs, target, *, model=...) takes the model by keyword, "
            f"and got a {type(misplaced).__name__} where the inputs or the target go: pass "
            "model=model"
        )
    model = unwrapped(model)  # the model inside torch's wrappers
    # every method runs the model (a composite or Captum's, and the predicted class's pass):
    # in training mode each pass would move its BatchNorm statistics
    check_eval_mode(model if model is not None else getattr(method, "forward_func", None))
    single = inputs if isinstance(inputs, torch.Tensor) else None
    if isinstance(inputs, tuple) and len(inputs) == 1:
        single = inputs[0]
    if isinstance(method, Composite):
        if not isinstance(model, torch.nn.Module):
            raise ValueError(
                "a Zennit composite runs on the classifier's modules: pass "
                f"model=<torch.nn.Module> (got {type(model).__name__}), or compute the relevance "
                "yourself and pass the tensor"
            )
        if single is None:
            raise ValueError(
                f"a Zennit composite explains one input tensor, not a tuple of {len(inputs)}; "
                "pass the relevance as a tuple of tensors, a Captum attribution or a callable"
            )
        with exclusive(model):
            classes = _predicted(model, (single,)) if target is None else target
            return run_composite(model, method, single, one_hot_of(classes))[1]
    if hasattr(method, "attribute"):
        forward = model if model is not None else getattr(method, "forward_func", None)
        with exclusive(model_of(forward)):  # a Captum method may put hooks on the model
            if target is None and forward is not None:
                target = _predicted(forward, _as_tuple(inputs))
            return _detached(method.attribute(inputs, target=target))
    if callable(method):
        with exclusive(model_of(model)):
            if target is None and model is not None:
                target = _predicted(model, _as_tuple(inputs))
            return _detached(method(inputs, target))
    raise TypeError(f"a relevance must be {FORMS}; got {type(method).__name__}")


def _predicted(forward: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> Any:
    """Each example's predicted output in Captum's target form (one forward pass)."""
    with torch.no_grad(), compiled_code_eager():  # the model's prediction, not its graph's
        output = forward(*inputs)
    return captum_targets(resolve_targets(None, output), tuple(output.shape[1:]))


def _as_tuple(inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def _detached(result: Any) -> Any:
    if isinstance(result, torch.Tensor):
        return result.detach()
    if isinstance(result, tuple):
        return tuple(r.detach() if isinstance(r, torch.Tensor) else r for r in result)
    return result


__all__ = [
    "FORMS",
    "Relevance",
    "check_gives_relevance",
    "compute_relevance",
    "one_hot_of",
    "run_composite",
]
