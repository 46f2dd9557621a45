"""Integrative CAM: class activation maps of every convolutional stage, fused into one map.

Reconstructed from the abstract of Singh et al., "Integrative CAM" (arXiv 2412.01354); the
choices and their reasons are listed in ``docs/integrative-cam-decisions.md``. For each stage
``l`` with feature map ``A`` and gradient ``g = dS/dA`` of the target score ``S``:

    L_l = ReLU(c sum_k w_k A_k + sign(phi'(S)) B_l)   w from the generalised alpha (alpha.py)
    B_l = sum_c b_c dS/dZ_c                    the FullGrad bias map (see bias.py)
    c   = |sum(g * A) - sum(B_l)| / |sum(sum_k w_k A_k)|   both terms in score units (calibrate;
          1 where the denominator is 0)
    M   = minmax( sum_l s_l Up(minmax(L_l)) / sum_l s_l )
    s_l = mean(ReLU(sign(phi'(S)) g * A))   ("adaptive")   or 1   ("uniform")

One forward and one backward pass serve every stage: each stage's map is computed inside a
gradient hook the moment its gradient arrives, added to a running sum, and its tensors released,
so memory does not grow with the number of stages. The backward pass stops as soon as the last
stage's gradient has arrived (no weight gradients, no gradient for the image itself).
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, overload

import numpy as np
import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn
from torch.nn.modules import module as module_registry
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)

from ctc_plugin._moved import moved_keywords
from ctc_plugin.cam.alpha import AlphaTerms, Phi, alpha_terms, channel_weights, resolve_phi
from ctc_plugin.cam.bias import bias_map
from ctc_plugin.cam.calibration import (
    LayerScore,
    adaptive_layer_score,
    calibrate,
    check_layer_score,
    per_example_dot,
    stage_rest,
)
from ctc_plugin.cam.fusion import RunningFusion, minmax
from ctc_plugin.cam.layers import Stage, StageTracer, module_names
from ctc_plugin.cam.reshapes import (
    BlockReshape,
    TupleOutput,
    call_arguments,
    check_square_grid,
    reads_patch_grid,
    with_reshape_transform,
)
from ctc_plugin.cam.transformers import (
    UnknownBlocksError,
    record_conv_grid,
    record_embedding_grids,
    refused_blocks,
    transformer_stages,
)
from ctc_plugin.canonizers import rule_hooks
from ctc_plugin.concurrency import CallScope, holds_model, model_of
from ctc_plugin.inputs import (
    changes_in_training,
    check_eval_mode,
    check_float_model,
    check_gradient_weights,
    check_inputs,
    check_model_has_values,
    check_python_model,
    check_takes_images,
    dtype_mismatch_explained,
    is_quantized,
    outside_inference_mode,
    quantized_module_error,
    training_mode_error,
)
from ctc_plugin.module_paths import module_path, named_modules_as_given, unwrapped
from ctc_plugin.module_state import compiled_code_eager
from ctc_plugin.targets import TargetType as Target
from ctc_plugin.targets import check_finite_target_outputs, check_target, output_not_a_tensor
from ctc_plugin.targets import target_scores as select_scores
from ctc_plugin.wording import NOISE_TUNNEL_MODULE, called_from, caller_stacklevel, counted

TensorOrTuple = Tensor | tuple[Tensor, ...]


class NoFeatureMapsError(ValueError):
    """No convolution ran and no known transformer block: Integrative CAM has no map to fuse.

    Raised by [`IntegrativeCAM`][ctc_plugin.IntegrativeCAM] without ``layers=`` (give the
    modules whose (N, C, H, W) outputs it should fuse), also where the model ran in another
    thread than the one that called ``attribute``.
    """


@dataclass
class LayerMaps:
    """The per-layer maps behind a fused Integrative CAM.

    Attributes:
        names: The stages' names, in forward order; a module that is a stage at several calls
            (one module run twice in ``forward``) has its calls numbered, ``"c#1"``, ``"c#2"``.
        steps: The operations of each stage, e.g. ``("conv", "bn", "relu")`` or ``("layer",)``.
        maps: Each stage's normalised map at input resolution, shape (N, L, H, W) (zeros for a
            stage that received no gradient).
        weights: The weight each example gave each stage, shape (N, L); rows sum to 1.
    """

    names: list[str]
    steps: list[tuple[str, ...]]
    maps: Tensor
    weights: Tensor


def _record_layer(
    tracer: StageTracer,
    name: str,
    reshape: BlockReshape | None,
    module: nn.Module,
    args: tuple,
    kwargs: dict[str, Any],
    output: Any,
) -> Tensor | None:
    """Forward hook (with kwargs) of a chosen layer: make its output a stage.

    Returns the output that replaces the layer's, where the tracer makes one (a copy that
    requires grad of a frozen layer's output on a cut input), else None.

    The call's arguments are bound to the layer's ``forward`` only where its reshape reads the
    grid from them (a `TupleOutput` with ``grid_arguments``: Hugging Face's Swin, PVT).
    """
    arguments = None
    if isinstance(reshape, TupleOutput) and reshape.grid_arguments:
        arguments = call_arguments(module, args, kwargs)
    return tracer.add_layer_output(name, output, module, reshape, arguments)


class LayerCalledAgainWarning(UserWarning):
    """A layer of ``layers=[...]`` ran more than once in one forward pass: every call is fused.

    Captum's layer methods explain its last call and pytorch-grad-cam's its first. Where the
    forward function runs the model more than once on purpose (test-time augmentation, an
    ensemble), fusing every call is what it asks for: silence it with
    ``warnings.filterwarnings("ignore", category=LayerCalledAgainWarning)``.
    """


def _warn_of_layers_called_again(modules: list[nn.Module], names: dict[int, str]) -> None:
    """Warn where a module of ``layers=[...]`` ran more than once (``names``: by ``id``)."""
    counts = collections.Counter(id(module) for module in modules)
    again = {key: count for key, count in counts.items() if count > 1}
    if again:
        listed = ", ".join(
            f"{names.get(key, '?')!r} ({count} calls)" for key, count in again.items()
        )
        warnings.warn(
            f"layers run more than once in one forward pass: {listed}; Integrative CAM fuses "
            "the map of every call (Captum's layer methods explain the last call, "
            "pytorch-grad-cam's the first): to explain one output, choose a module that runs "
            "once (torchvision's BasicBlock calls its relu twice: choose the block); where "
            "your forward function runs the model more than once on purpose (test-time "
            "augmentation), every call is fused as intended (LayerCalledAgainWarning)",
            LayerCalledAgainWarning,
            stacklevel=caller_stacklevel(),
        )


def _refuse_training_module(cam: IntegrativeCAM, module: nn.Module, _inputs: Any) -> None:
    """Global forward pre-hook of a call: refuse a module about to run in training mode.

    And a TorchScript module, whose stages would be lost silently, a quantized one, which
    takes no gradient, and one carrying a Zennit composite's rule, which replaces its gradient.

    Raises:
        TrainingModeError: Before the module's forward runs (BatchNorm counts its batches before
            its statistics: both stay untouched).
        ValueError: Before a quantized module runs (`ctc_plugin.inputs.is_quantized`).
        TypeError: Before a TorchScript module runs.
        RuntimeError: Before a module with a Zennit rule (a composite registered on the model)
            runs, or its rule's hooks.
    """
    rule = next(rule_hooks(module), None)
    if rule is not None:
        raise RuntimeError(
            f"{cam._layer_name(module)!r} carries the rule {type(rule).__name__} of a Zennit "
            "composite registered on the model (an open `with composite.context(model)` or a "
            "Zennit attributor's `with` block): the rules replace the gradients that Integrative "
            "CAM weighs its maps by, so its maps would be neither its own nor the composite's; "
            "call Integrative CAM outside that block"
        )
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError(
            f"{cam._layer_name(module)!r} is a TorchScript {type(module).__name__} "
            "(torch.jit.script or torch.jit.trace): its operations run outside Python, where "
            "IntegrativeCAM can neither see its stages nor hook its layers; use the original "
            "nn.Module in its place"
        )
    if is_quantized(module):
        raise quantized_module_error(module, repr(cam._layer_name(module)), "Integrative CAM")
    if changes_in_training(module):
        raise training_mode_error(module, repr(cam._layer_name(module)))


def _refuse_other_channel_counts(
    inputs: TensorOrTuple, seen: list[nn.Module], module: nn.Module, args: Any
) -> None:
    """Global forward pre-hook of a call: refuse another channel count at the first convolution.

    The first ``nn.Conv2d`` that runs tells the channel count the model takes. When it is about
    to get another count (torch would refuse it from inside the model) and that count is the
    batch's dimension 1 (the images themselves: a grayscale or RGBA batch for an RGB model), or
    the batch's last dimension has the model's count while its dimension 1 does not (a
    channels-last batch, (N, H, W, C)), the call is refused with the message CTC and the
    segmenters give, and its fix (``x.permute(0, 3, 1, 2)``, ``x.expand(-1, 3, -1, -1)``,
    ``x[:, :3]``).

    Raises:
        ValueError: Before the convolution runs.
    """
    if seen or not isinstance(module, nn.Conv2d):
        return
    seen.append(module)
    channels, images = module.in_channels, inputs[0] if isinstance(inputs, tuple) else inputs
    if not args or not isinstance(args[0], Tensor) or isinstance(module, LazyModuleMixin):
        return  # an input given by keyword, or a channel count not known yet
    given = args[0].shape[-3] if args[0].dim() >= 3 else None
    if given == channels or images.dim() != 4 or images.shape[1] == channels:
        return
    if images.shape[-1] == channels or images.shape[1] == given:
        check_inputs(inputs, images=True, channels=channels, finite=False)  # the message


class EmptyMapWarning(UserWarning):
    """A fused map is zero everywhere, or so faint that it is at the scale of rounding.

    Zero (`ZeroMapWarning`): no stage gave the example a positive weighted CAM. Faint: its peak
    stays below 1/2 after min-max (its range before was below the normalisation's ``1e-7``).
    """


class ZeroMapWarning(EmptyMapWarning):
    """A fused map is zero everywhere: no stage gave the example a positive weighted CAM.

    A caller that explains many images one at a time (``ctc-plugin explain-dataset``) can
    silence it and say it once, from the maps (or their segment means) being zero.
    """


#: Why a fused map is zero everywhere, in the warnings of the library and of the command.
ZERO_MAP_REASON = "no stage's weighted CAM is positive there"


def _warn_of_empty_maps(maps: Tensor, weighted: Tensor | None = None) -> None:
    """Warn (`EmptyMapWarning`) of the examples whose fused map is zero everywhere.

    ``weighted``: (N,) whether some stage gave the example a nonzero channel weight; a zero
    map without one is told apart (the score's gradient is 0 at every stage, as for a
    classifier head of zeros), since the other reasons' advice (another ``phi``) cannot help.

    A stage's map is its ReLU'd weighted activations; where every stage's is zero (signed token
    maps whose Grad-CAM++ weights cancel, a last block whose patch tokens reach no score), the
    map says nothing, which an all-zero array alone does not tell. So does a map whose peak
    stays below 1/2: the range it had before the last min-max was below that normalisation's
    ``1e-7`` (an untrained model, logits near 0, whose stage maps and weights are tiny).
    """
    peaks = maps.flatten(1).amax(1)
    faint = ((peaks > 0) & (peaks < 0.5)).nonzero().flatten().tolist()
    if faint:
        warnings.warn(
            f"IntegrativeCAM's map of example(s) {faint[:10]} peaks at "
            f"{float(peaks[faint[0]]):.2g}, not 1: before the last min-max its range was below "
            "1e-7 (the stages' maps and weights are tiny, as for an untrained model or logits "
            "near 0), so it is at the scale of rounding and explains nothing",
            EmptyMapWarning,
            stacklevel=caller_stacklevel(),
        )
    zero = peaks <= 0
    if weighted is not None and bool((zero & ~weighted).any()):
        unweighted = (zero & ~weighted).nonzero().flatten().tolist()
        zero = zero & weighted
        warnings.warn(
            f"IntegrativeCAM's map of example(s) {unweighted[:10]} is zero everywhere: every "
            "stage's channel weights are 0 there, as the gradient of the target score is 0 at "
            "every unit (or, for the Grad-CAM++ weights of the default phi, nowhere positive); "
            "an untrained classifier whose head is initialised to zeros (torchvision's "
            "VisionTransformer) has such a gradient: explain a trained model",
            ZeroMapWarning,
            stacklevel=caller_stacklevel(),
        )
    empty = zero.nonzero().flatten().tolist()
    if empty:
        warnings.warn(
            f"IntegrativeCAM's map of example(s) {empty[:10]} is zero everywhere: "
            f"{ZERO_MAP_REASON}. On a vision transformer's signed token maps the Grad-CAM++ "
            "weights of the default phi can cancel (phi='identity' gives Grad-CAM weights), and "
            "a last block whose patch tokens reach no score has none (explain its first norm "
            "instead: ctc_plugin.cam.grad_cam_layer); see the Integrative CAM decisions page",
            ZeroMapWarning,
            stacklevel=caller_stacklevel(),
        )


def _last_grid(grids: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The grid `record_conv_grid` kept last, ``None`` if no convolution ran."""
    return grids[0] if grids else None


def _layer_list(layers: Sequence[nn.Module]) -> list[nn.Module]:
    """The ``layers`` argument as a list of modules; refuse anything else with what to pass.

    An ``nn.ModuleList`` is a list of modules; any other single module is refused: Captum's
    layer methods take one, and an ``nn.Sequential`` would otherwise be read as its children.

    Raises:
        TypeError: A single module, or items that are no modules (names included) or
            containers that are never called (an ``nn.ModuleList`` inside the list).
        ValueError: An empty list, or one that lists a module more than once.
    """
    if isinstance(layers, nn.Module) and not isinstance(layers, nn.ModuleList):
        each = "list(module)" if isinstance(layers, nn.Sequential) else "list(module.children())"
        children = (
            f", or layers={each} for each of its submodules" if len(list(layers.children())) else ""
        )
        raise TypeError(
            f"layers must be a list of modules, got a single {type(layers).__name__}: pass "
            f"layers=[module] to explain its output{children}"
        )
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty; pass None to use every convolutional stage")
    names = [m for m in layers if isinstance(m, str)]
    if names:
        raise TypeError(
            f"layers must be torch.nn.Module instances, got the names {names}; pass the "
            f"modules, e.g. model.get_submodule({names[0]!r})"
        )
    bad = [type(m).__name__ for m in layers if not isinstance(m, nn.Module)]
    if bad:
        raise TypeError(f"layers must be torch.nn.Module instances, got {bad}")
    containers = [
        f"a {type(m).__name__} at position {i}"
        for i, m in enumerate(layers)
        if isinstance(m, (nn.ModuleList, nn.ModuleDict))
    ]
    if containers:  # no forward: never called, and the call would say only that
        raise TypeError(
            f"layers holds {', '.join(containers)}, a container that is never called (it has "
            "no forward); pass its modules: layers=list(blocks) for a ModuleList, "
            "layers=list(blocks.values()) for a ModuleDict, or layers=[blocks[-1]] for the last"
        )
    positions: dict[int, list[int]] = {}
    for i, module in enumerate(layers):
        positions.setdefault(id(module), []).append(i)
    repeated = [
        f"{type(layers[at[0]]).__name__} at positions {at}"
        for at in positions.values()
        if len(at) > 1
    ]
    if repeated:  # it would be a stage twice, weighing double in the fusion
        raise ValueError(
            f"layers lists a module more than once ({'; '.join(repeated)}); list each once"
        )
    return layers


#: Keywords of Captum's ``LayerGradCam.attribute``, with what each comes to here.
_PEER_ATTRIBUTE_KEYWORDS = {
    "relu_attributions": "Integrative CAM's maps are ReLU'd and min-max normalised, in [0, 1] "
    "already: drop it",
    "attribute_to_layer_input": "pass layers=[the module that computes that input], whose "
    "output is explained",
    "attr_dim_summation": "the maps are (N, 1, H, W), one channel already: drop it",
}

#: Keywords of Captum's ``LayerGradCam`` and pytorch-grad-cam's constructors.
_PEER_CONSTRUCTOR_KEYWORDS = {
    "layer": "pass layers=[module] (a list: Integrative CAM fuses several)",
    "target_layers": "pass layers=[module] (ctc_plugin.adapters.gradcam.IntegrativeGradCAM, "
    "the pytorch-grad-cam face, takes target_layers)",
}


class _BackwardDone(Exception):
    """Raised by the last stage hook to stop the backward pass early."""


class IntegrativeCAM(Attribution):
    """Class activation maps fused across all stages of a model (a Captum attribution).

    The stages of a CNN are its convolutional stages; those of a vision transformer are its
    blocks' token maps, reshaped to the patch grid (class token dropped, Swin's windows
    merged), as pytorch-grad-cam's ``reshape_transform`` does.

    Args:
        forward_func: The model, or any function of the inputs returning scores batch first
            (not a TorchScript module, whose operations IntegrativeCAM cannot see: refused).
        layers: A list of modules whose outputs to explain (an ``nn.ModuleList`` counts as
            one; a single module, e.g. an ``nn.Sequential``, is refused: wrap it in a list),
            called with gradients on; ``None`` finds them: the blocks of a known
            vision transformer (PyTorch's ``nn.TransformerEncoderLayer``, torchvision's ViT,
            Swin v1/v2, MaxViT, the zoo's ViT, timm's and Hugging Face's families; see
            [`transformer_stages`][ctc_plugin.cam.transformer_stages]), otherwise every
            convolutional stage (convolution, folded BatchNorm, ReLU) in the forward pass,
            functional calls included. A model that computes attention but whose blocks are
            of no known type is refused rather than explained by its patch embedding alone,
            unless every attention's output reaches a convolutional stage (a CNN with
            attention inside its stages: BoTNet, NextViT; `ctc_plugin.cam.attention_reach`).
        phi: The smooth function of the score whose derivatives set the channel weights:
            ``"exp"`` (Grad-CAM++), ``"softplus"``, ``"sigmoid"``, ``"identity"`` (Grad-CAM
            weights), a [`Phi`][ctc_plugin.cam.Phi] with explicit derivatives, or a scalar
            torch function (derivatives by ``torch.func``). Where phi's second and third
            derivatives have other signs along the evidence (softplus at positive scores; the
            sigmoid between about -1.32 and 0 and above about 1.32) an alpha outside [0, 1/2] is
            taken as 1/2, and where the second is 0 Grad-CAM weights are used (see the
            decisions page: generalised alpha).
        bias: Add each stage's FullGrad bias map before its ReLU.
        layer_weights: ``"adaptive"``
            ([`adaptive_layer_score`][ctc_plugin.cam.calibration.adaptive_layer_score]),
            ``"uniform"``, or a callable ``score(grad, act) -> (N,)`` of non-negative scores
            (``grad`` is ``sign(phi'(S)) dS/dA``, the gradient of ``phi(S)`` up to a positive
            factor: ``dS/dA`` for every built-in ``phi``).
        reshape_transform: Turns each chosen layer's output (and its gradient) into an
            (N, C, H, W) map, e.g. [`tokens_to_grid`][ctc_plugin.cam.tokens_to_grid] for
            (N, T, D) token maps; ``None``: the outputs are such maps (or, for known
            transformer blocks, their own reshape; a chosen layer's output that looks
            channels-last, (N, H, W, C), is refused). Without ``layers``, it replaces the
            reshapes of the transformer blocks found, and is refused where none are. For a
            found block that returns a tuple (TNT, MViTv2) it reshapes the tensor picked out
            of the tuple; for chosen layers that return tuples, pass a
            `ctc_plugin.cam.TupleOutput` naming it.

    Threads: one instance and one model may serve several threads at once; each call gives
    exactly what it gives alone. A call only reads the model: the layer hooks it registers
    record its own forward pass and ignore other threads' passes through the same modules, so
    calls run concurrently, and wait while a call that changes the model (a
    [`CTCAttributor`][ctc_plugin.CTCAttributor] pass) runs on it (see
    [`ctc_plugin.concurrency`][ctc_plugin.concurrency]).

    Examples:
        >>> cam = IntegrativeCAM(model)
        >>> maps = cam.attribute(images, target=labels)        # (N, 1, H, W) in [0, 1]
    """

    @classmethod
    def get_name(cls) -> str:
        """The method's name in Captum's summaries and plots (its default spells "C A M")."""
        return "Integrative CAM"

    @moved_keywords(foreign=_PEER_CONSTRUCTOR_KEYWORDS)
    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layers: Sequence[nn.Module] | None = None,
        phi: str | Phi | Callable[[Tensor], Tensor] = "exp",
        bias: bool = True,
        layer_weights: Literal["adaptive", "uniform"] | LayerScore = "adaptive",
        reshape_transform: BlockReshape | None = None,
    ) -> None:
        check_python_model(forward_func, "IntegrativeCAM")
        super().__init__(unwrapped(forward_func))  # the model inside torch's wrappers
        if reshape_transform is not None and not (
            callable(reshape_transform) or isinstance(reshape_transform, TupleOutput)
        ):
            raise TypeError(
                "reshape_transform must be a callable (N, ...) -> (N, C, H, W), or a "
                "ctc_plugin.cam.TupleOutput for layers that return tuples"
            )
        self.reshape_transform = reshape_transform
        self.layers = None if layers is None else _layer_list(layers)
        self.phi = resolve_phi(phi)
        if not isinstance(bias, (bool, np.bool_)):  # a string "False" would be true
            raise TypeError(f"bias must be True or False, got {bias!r} ({type(bias).__name__})")
        self.bias = bool(bias)
        if isinstance(layer_weights, str) and layer_weights not in ("adaptive", "uniform"):
            raise ValueError(
                f"layer_weights must be 'adaptive', 'uniform' or a callable, got {layer_weights!r}"
            )
        if not isinstance(layer_weights, str) and not callable(layer_weights):
            raise TypeError("layer_weights must be 'adaptive', 'uniform' or a callable")
        self.layer_weights = layer_weights

    def _score_fn(self) -> LayerScore | None:
        if self.layer_weights == "uniform":
            return None
        if self.layer_weights == "adaptive":
            return adaptive_layer_score
        return self.layer_weights  # type: ignore[return-value]

    @property
    def _model(self) -> nn.Module | None:
        """The module behind the forward function: itself, or a bound method's owner."""
        return model_of(self.forward_func)

    def _subject(self) -> str:
        """How messages name the forward pass: ``the forward pass of ResNet``, or of a function."""
        if self._model is not None:
            return f"the forward pass of {type(self._model).__name__}"
        return "the forward function"

    def _function_hint(self) -> str:
        """For a plain function, that its blocks can only be found in an ``nn.Module``."""
        if self._model is not None:
            return ""
        return (
            "; the blocks of a plain function cannot be found, as its modules are unknown: "
            "pass the model itself, or wrap the function in an nn.Module (a Hugging Face "
            "model: ctc_plugin.adapters.huggingface.HuggingFaceClassifier(model))"
        )

    def _names(self) -> dict[int, str]:
        return module_names(self._model) if self._model is not None else {}

    def _layer_name(self, module: nn.Module) -> str:
        name = module_path(self._model, module) if self._model is not None else None
        return name or type(module).__name__  # the user's path, behind a normalisation too

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: Target = None,
        additional_forward_args: Any = None,
        return_layer_maps: Literal[False] = False,
    ) -> Tensor: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: Target = None,
        additional_forward_args: Any = None,
        *,
        return_layer_maps: Literal[True],
    ) -> tuple[Tensor, LayerMaps]: ...

    @log_usage()
    @holds_model()
    @outside_inference_mode
    @dtype_mismatch_explained
    @moved_keywords(foreign=_PEER_ATTRIBUTE_KEYWORDS)
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: Target = None,
        additional_forward_args: Any = None,
        return_layer_maps: bool = False,
    ) -> Tensor | tuple[Tensor, LayerMaps]:
        """Return the fused map of each example at input resolution, shape (N, 1, H, W).

        Args:
            inputs: A finite floating-point batch of images (N, C, H, W), N >= 1, or a tuple
                of such tensors sharing dimension 0 whose first sets the output size (integer
                arguments belong in ``additional_forward_args``).
            target: Which score to explain: ``None`` (each example's predicted class), an int,
                a tuple, a tensor, or a list of ints, tuples or callables (one per example;
                callables such as pytorch-grad-cam's ``ClassifierOutputTarget`` receive the
                example's output row).
            additional_forward_args: Extra positional arguments of ``forward_func``.
            return_layer_maps: Also return the per-stage maps and weights
                ([`LayerMaps`][ctc_plugin.cam.LayerMaps]).

        Returns:
            Maps in [0, 1], one per example; with ``return_layer_maps`` a tuple
            ``(maps, LayerMaps)``.

        Raises:
            TypeError: ``return_layer_maps=True`` given through Captum's ``NoiseTunnel``
                (it averages tensors only), or inputs that are not tensors (see
                [`ctc_plugin.inputs.check_inputs`][ctc_plugin.inputs.check_inputs]).
            ValueError: Inputs that are not a finite float image batch (a channels-last batch
                (N, H, W, C) is refused when the first ``nn.Conv2d`` that runs takes C
                channels, before it runs), a model without
                convolutional stages (`NoFeatureMapsError`, a ``ValueError``; or chosen layers
                that never ran, or whose map is 1 x 1), stages computed with
                gradients off (``torch.no_grad()`` inside the model, reentrant
                ``torch.utils.checkpoint``), a ``reshape_transform`` with no layers to apply it
                to, an output that is not differentiable or has no row per example, a target
                score that is NaN or infinite, a gradient of it that is not finite at a stage
                (an infinite derivative after it, ``torch.sqrt`` at 0: the message names the
                stages), a target that does not fit (not integer class
                indices, out of range, or of the wrong length), or weights that are inference
                tensors (a model made under ``torch.inference_mode()``; the message gives the
                line that makes them ordinary tensors).
            TrainingModeError: The model has BatchNorm or dropout in training mode (its
                statistics would change, and a BatchNorm cannot be folded into a bias); nothing
                has run (call ``model.eval()``). For a plain function, raised when such a module
                (or a functional dropout or batch norm in training mode) is about to run.
            RuntimeError: A Zennit composite is registered on the model (inside ``with
                composite.context(model)`` or a Zennit attributor's ``with`` block): its rules
                replace the gradients the maps are weighed by. Raised before the first module
                carrying a rule runs; call outside the block.
        """
        if return_layer_maps and called_from(NOISE_TUNNEL_MODULE):
            raise TypeError(
                "return_layer_maps=True cannot pass through Captum's NoiseTunnel, which "
                "averages tensors only: call NoiseTunnel(cam).attribute(...) without it, or "
                "call cam.attribute(noisy_images, ..., return_layer_maps=True) on noisy copies "
                "you make and average their LayerMaps.maps"
            )
        inputs_tuple = check_inputs(inputs, images=True)
        check_model_has_values(self.forward_func)
        check_float_model(self.forward_func, "Integrative CAM")
        check_eval_mode(self.forward_func)  # before the forward pass can update statistics
        check_gradient_weights(self.forward_func, "Integrative CAM")
        check_takes_images(self.forward_func)
        check_target(target, inputs_tuple[0].shape[0])  # the form; the range after the pass
        size = (int(inputs_tuple[0].shape[-2]), int(inputs_tuple[0].shape[-1]))
        extra = additional_forward_args
        extra = () if extra is None else extra if isinstance(extra, tuple) else (extra,)
        leaves = tuple(t.detach().requires_grad_(True) for t in inputs_tuple)
        run = _Run(self, size, return_layer_maps)
        chosen = self._chosen_layers()
        if chosen is None and self.reshape_transform is not None:
            why = (
                "has no transformer block IntegrativeCAM knows: its convolutional stages are "
                "(N, C, H, W) maps already"
                if self._model is not None
                else "is a plain function, whose blocks cannot be found (its modules are unknown)"
            )
            raise ValueError(
                f"reshape_transform was given, but layers=None and {self._subject()} {why}, so "
                "the reshape would be ignored; pass layers=[the modules whose outputs it "
                "reshapes], or the model itself (a Hugging Face model: ctc_plugin.adapters."
                "huggingface.HuggingFaceClassifier(model))"
            )
        patch_grids: list[tuple[int, int]] = []  # the output size of the last Conv2d that ran
        guessed = chosen is not None and any(reads_patch_grid(r) for _, r in chosen)
        if chosen is not None:
            seen = partial(_last_grid, patch_grids)
            chosen = [(module, check_square_grid(r, size, seen)) for module, r in chosen]
        tracer = StageTracer(
            run.on_grad,
            discover=chosen is None,
            fold_bias=self.bias,
            names=self._names(),
            image_size=size,
            examples=len(leaves[0]),
            refuse_point_maps=self.layers is not None,
        )
        handles = []
        scope = CallScope()  # the layer hooks record this call's forward pass only
        try:
            # a plain function's modules are unknown before it runs: refuse each one in
            # training mode as it is called, before its forward can change it
            hook = scope.only(partial(_refuse_training_module, self))
            handles.append(register_module_forward_pre_hook(hook))
            hook = scope.only(partial(_refuse_other_channel_counts, inputs, []))
            handles.append(register_module_forward_pre_hook(hook))
            if guessed:  # the square default's guess is checked against the patch grid
                hook = scope.only(partial(record_conv_grid, patch_grids, len(leaves[0])))
                handles.append(register_module_forward_hook(hook))
                handles += record_embedding_grids(self._model, patch_grids, scope)
            chosen_modules = [module for module, _ in chosen or []]
            if self._model is not None:
                _refuse_replaced_outputs(self._model, scope, handles, tracer, chosen_modules)
            _refuse_globally_replaced_outputs(self, scope, handles, tracer, chosen_modules)
            # after that check, which is needed only where other global hooks run
            handles.append(register_module_forward_pre_hook(scope.only(tracer.enter_module)))
            handles.append(register_module_forward_hook(scope.only(tracer.leave_module)))
            for module, reshape in chosen or []:
                name = self._layer_name(module)
                hook = scope.only(partial(_record_layer, tracer, name, reshape))
                handles.append(module.register_forward_hook(hook, with_kwargs=True))
            with torch.enable_grad():
                with compiled_code_eager(), tracer, scope:  # compiled code: its Python code
                    # copies: a model may normalise its input in place, which torch refuses
                    # on a leaf that requires grad (and which would change the caller's tensor)
                    output = self.forward_func(*(leaf.clone() for leaf in leaves), *extra)
                tracer.finish()
                for handle in handles:
                    handle.remove()
                handles.clear()
                scores = self._scores(output, target, len(leaves[0]))
                self._check_stages(tracer, chosen)
                run.start(tracer.stages, alpha_terms(self.phi, scores))
                # the stages too: a stage cut off the input (a stem the model runs under
                # torch.no_grad()) still gets its gradient
                differentiate = [t for t in leaves if t.requires_grad] + [
                    s.tensor for s in tracer.stages if s.handle is not None
                ]
                differentiate += tracer.roots  # stages copied to require grad, at their root
                try:
                    torch.autograd.grad(scores.sum(), differentiate, allow_unused=True)
                except _BackwardDone:
                    pass
            run.check_finite()
            if run.fusion.count == 0:
                raise ValueError(
                    "no gradient of the target score reached any stage: the target does not "
                    "depend on the explained layers"
                )
            dtype = inputs_tuple[0].dtype
            result = run.fusion.result().to(dtype)
            _warn_of_empty_maps(result, run.weighted)
            if not return_layer_maps:
                return result
            return result, run.layer_maps(tracer.stages, len(scores), dtype)
        finally:
            for handle in handles:
                handle.remove()
            for stage in tracer.stages:
                stage.release()

    @staticmethod
    def _scores(output: Any, target: Target, examples: int) -> Tensor:
        """The target score of each of the ``examples``, shape (N,); refuse other outputs.

        Raises:
            ValueError: An output that is no differentiable float tensor with one row per
                example, a target that does not select one score per example, or a score that
                is not finite.
        """
        if not isinstance(output, Tensor):
            raise output_not_a_tensor(output)
        if output.dim() == 0 or output.shape[0] != examples:
            raise ValueError(
                f"forward_func returned shape {tuple(output.shape)} for {examples} examples; it "
                "must return the scores batch first, one row per example (the map of each "
                "example explains its own score)"
            )
        if not output.is_floating_point() or not output.requires_grad:
            raise ValueError(
                "the output of forward_func is not differentiable (it was computed under "
                "torch.no_grad(), detached, or is an integer such as an arg-max); IntegrativeCAM "
                "needs the gradient of the target score"
            )
        scores = select_scores(output, target)
        if scores.dim() != 1 or scores.shape[0] != output.shape[0]:
            raise ValueError(
                f"the target selects shape {tuple(scores.shape)} from an output of shape "
                f"{tuple(output.shape)}; it must select one score per example"
            )
        check_finite_target_outputs(scores)
        return scores

    def _chosen_layers(self) -> list[tuple[nn.Module, BlockReshape | None]] | None:
        """The layers to explain with their reshapes; ``None``: find the convolutional stages."""
        if self.layers is not None:
            return [(module, self.reshape_transform) for module in self.layers]
        if self._model is None:
            return None
        found = transformer_stages(self._model)
        if not found:
            return None
        given = self.reshape_transform
        if given is None:
            return found
        return [(module, with_reshape_transform(reshape, given)) for module, reshape in found]

    def _check_stages(
        self, tracer: StageTracer, chosen: list[tuple[nn.Module, BlockReshape | None]] | None
    ) -> None:
        stages = tracer.stages
        if self.layers is not None:  # the user's layers (not the blocks found): each named
            names = {id(module): self._layer_name(module) for module in self.layers}
            _warn_of_layers_called_again(tracer.modules, names)
        unreached = tracer.reach.unreached if tracer.reach is not None else 0
        if chosen is None and unreached:  # attention inside the stages is shown by them
            refused = refused_blocks(self._model) if self._model is not None else []
            if refused:  # blocks known, and known not to make maps of the image here
                raise UnknownBlocksError(
                    f"{self._subject()} computes attention in blocks IntegrativeCAM does not "
                    f"explain: {'; '.join(refused)}; to explain other layers, pass layers=["
                    "modules returning (N, T, D) tokens or (N, C, H, W) maps] with a "
                    "reshape_transform, or register a block type in "
                    f"ctc_plugin.cam.BLOCK_RESHAPES{self._function_hint()}"
                )
            raise UnknownBlocksError(
                f"{self._subject()} computes attention, but none of its modules is a "
                "transformer block IntegrativeCAM knows (PyTorch's batch-first "
                "nn.TransformerEncoderLayer in a model whose one convolution is a patch "
                "embedding, torchvision's ViT, Swin, MaxViT, the "
                "zoo's ViT, the timm and Hugging Face blocks in ctc_plugin.cam.known_blocks."
                "TIMM_BLOCKS and HUGGINGFACE_BLOCKS), and the output of its attention reaches "
                f"no convolutional stage ({unreached} of {counted(tracer.reach.calls, 'call')}; "
                "attention inside a CNN's stages, followed by a convolution or a BatchNorm, is "
                "shown by them), so its convolutional stages alone would be a partial map; pass "
                "layers=[modules returning (N, T, D) tokens or (N, C, H, W) maps] and "
                "reshape_transform=ctc_plugin.cam.tokens_to_grid (or your own), or register "
                "the block type in ctc_plugin.cam.BLOCK_RESHAPES"
                f"{self._function_hint()}"
            )
        if chosen is None and not stages and tracer.point_maps:
            raise ValueError(
                f"every convolution in {self._subject()} ({tracer.point_maps}) made a 1 x 1 "
                "map, which shows no location (the image is no larger than their receptive "
                "fields); give larger images, or layers=[modules with larger (N, C, H, W) maps]"
            )
        if chosen is None and not stages:
            raise NoFeatureMapsError(
                f"no convolution ran in {self._subject()} in the thread that called "
                "attribute; IntegrativeCAM explains 2-D convolutional feature maps (pass "
                "layers=[...] to choose modules with (N, C, H, W) outputs, and "
                "reshape_transform=... for other outputs). A model that a thread pool or a "
                "serving wrapper runs in another thread is not seen: call it in this thread"
            )
        if chosen is not None:
            ran = {id(module) for module in tracer.modules}
            missing = [self._layer_name(m) for m, _ in chosen if id(m) not in ran]
            if missing:
                raise ValueError(
                    f"layers {missing} were not called by the forward pass in the thread that "
                    "called attribute; pass layers that the forward function runs. A model that "
                    "a thread pool or a serving wrapper runs in another thread is not seen: "
                    "call it in this thread"
                )
        without_grad = list(dict.fromkeys(stage.name for stage in stages if stage.without_grad))
        if without_grad:
            raise ValueError(
                f"{self._subject()} computed the stages {without_grad} with gradients off (under "
                "torch.no_grad() inside the model, or in torch.utils.checkpoint with "
                "use_reentrant=True): no gradient can reach them, and the fused map would leave "
                "them out; turn checkpointing off (timm: model.set_grad_checkpointing(False)) or "
                "checkpoint with use_reentrant=False, or pass layers=[modules that run with "
                "gradients]"
            )
        if not any(stage.handle is not None for stage in stages):
            raise ValueError(
                "no stage's output requires grad, so no gradient can reach it; do not run the "
                "model under torch.no_grad() or with detached activations"
            )


class _Run:
    """The state of one ``attribute`` call: the backward hooks' shared context."""

    def __init__(self, cam: IntegrativeCAM, size: tuple[int, int], keep_maps: bool) -> None:
        self.cam = cam
        self.size = size
        self.score = cam._score_fn()
        self.fusion = RunningFusion(size, keep_maps=keep_maps)
        self.terms: AlphaTerms | None = None
        self.stages: list[Stage] = []
        self.pending = 0
        #: Per stage that got its gradient: its index, name, and (N,) flags of the examples
        #: whose map or weight is not finite (read once, after the backward pass).
        self.nonfinite: list[tuple[int, str, Tensor]] = []
        #: (N,): whether some stage gave the example a nonzero channel weight.
        self.weighted: Tensor | None = None

    def start(self, stages: list[Stage], terms: AlphaTerms) -> None:
        self.terms = terms
        self.stages = stages
        self.pending = sum(stage.handle is not None for stage in stages)

    def on_grad(self, stage: Stage, grad: Tensor) -> None:
        """Compute one stage's map as its gradient arrives, add it to the fusion, free it."""
        terms = self.terms
        if terms is None:  # a backward pass run by the model itself during the forward
            return
        act, grad = stage.value(), stage.shaped(grad)
        # half precision underflows in the alpha (g**2, g**3) and cancels in the calibration
        dtype = torch.promote_types(act.dtype, torch.float32)
        act, grad, terms = act.to(dtype), grad.to(dtype), terms.to(dtype)
        # and so computed: the caller's autocast would run the products in half precision again
        with torch.no_grad(), torch.autocast(act.device.type, enabled=False):
            positive, score = None, None
            if self.score is adaptive_layer_score and terms.all_positive and stage.relu:
                # act >= 0 after the ReLU: ReLU(g * A) = ReLU(g) * A, and ReLU(g) is shared
                # by the score and the alpha numerator
                positive = torch.relu(grad)
                score = per_example_dot(positive, act) / act[0].numel()
            elif self.score is not None:
                # the gradient of Y = phi(S) up to a positive factor: sign(phi') dS/dA
                signed = grad if terms.all_positive else grad * terms.sign
                score = self.score(signed, act)
                if self.score is not adaptive_layer_score:
                    check_layer_score(score, stage.name, act.shape[0])
                score = score.reshape(-1).to(dtype)
            weights = channel_weights(grad, act, terms, positive)
            nonzero = (weights != 0).any(dim=1)
            self.weighted = nonzero if self.weighted is None else self.weighted | nonzero
            cam = torch.einsum("nc,nchw->nhw", weights, act)
            if self.cam.bias and stage.bias is not None:
                relu_output = act if stage.relu else None
                bias = bias_map(grad, stage.bias, relu_output)
                rest = stage_rest(grad, act, bias)  # the stage's score minus its bias
                cam = calibrate(cam, rest) + terms.sign.reshape(-1, 1, 1) * bias
            layer_map = minmax(torch.relu(cam).unsqueeze(1))
            bad = ~torch.isfinite(layer_map).flatten(1).all(1)
            self.nonfinite.append(
                (stage.index, stage.name, bad if score is None else bad | ~torch.isfinite(score))
            )
            self.fusion.add(stage.index, layer_map, score)
        stage.release()
        self.pending -= 1
        if self.pending == 0:
            raise _BackwardDone

    def check_finite(self) -> None:
        """Refuse the call where a stage's map or weight is not finite (one device sync).

        The target score is finite (checked before the backward pass), but its gradient need
        not be: an operation after a stage whose derivative is infinite where it is evaluated
        (``torch.sqrt`` or ``torch.log`` at 0) makes the stage's map NaN, and the fused map
        with it.

        Raises:
            ValueError: Naming the stages (in forward order) and the examples.
        """
        if not self.nonfinite:
            return
        bad = torch.stack([flags for _, _, flags in self.nonfinite])  # (stages, N)
        if not bool(bad.any()):
            return
        rows = bad.any(dim=1).tolist()
        names = [
            name for (_, name, _), row in sorted(zip(self.nonfinite, rows), key=_first_index) if row
        ]
        examples = bad.any(dim=0).nonzero().flatten().tolist()
        raise ValueError(
            f"the gradient of the target score is not finite at the stage(s) "
            f"{list(dict.fromkeys(names))} for example(s) {examples[:10]}, so their maps "
            "would be NaN: an operation after them has an infinite derivative where it is "
            "evaluated (torch.sqrt or torch.log at 0, a division by 0, an overflow); make it "
            "finite (e.g. torch.sqrt(x + 1e-12)), or pass layers=[modules after it]"
        )

    def layer_maps(self, stages: list[Stage], n: int, dtype: torch.dtype) -> LayerMaps:
        """Collect the kept per-stage maps and weights in forward order, in ``dtype``."""
        indices = [stage.index for stage in stages]
        template = self.fusion.result()
        maps = [self.fusion.layer_map(i) for i in indices]
        maps = [torch.zeros_like(template) if m is None else m for m in maps]
        return LayerMaps(
            names=_numbered_repeats([stage.name for stage in stages]),
            steps=[stage.steps for stage in stages],
            maps=torch.cat(maps, dim=1).to(dtype),
            weights=self.fusion.layer_weights(indices, n).to(dtype),
        )


def _numbered_repeats(names: list[str]) -> list[str]:
    """``names`` with each name that occurs more than once numbered by its occurrence (``#1``)."""
    totals = collections.Counter(names)
    seen: collections.Counter[str] = collections.Counter()
    numbered = []
    for name in names:
        seen[name] += 1
        numbered.append(f"{name}#{seen[name]}" if totals[name] > 1 else name)
    return numbered


def _refuse_replaced_outputs(
    model: nn.Module,
    scope: CallScope,
    handles: list[Any],
    tracer: StageTracer,
    chosen: list[nn.Module],
) -> None:
    """Refuse, as it runs, a forward hook of the user's that replaces an output the maps read.

    The stages are traced through the functions the layers call; a hook that returns another
    output (a channel mask, a scaling) changes the model's result behind them, and the maps
    and bias terms would be those of the model without it. A chosen layer's own output is
    recorded after every hook (its map is the hooked output's), unless it ends a traced
    convolution chain, whose bias term the hook would not change. Modules that have forward
    hooks get one hook first, which notes the output, and one last, which compares.
    """
    for name, module in named_modules_as_given(model):
        if not module._forward_hooks:
            continue
        computed: dict[str, Any] = {}
        recorded = any(module is layer for layer in chosen)

        def note(module: nn.Module, args: Any, output: Any, computed: dict = computed) -> None:
            computed["output"] = output

        def compare(
            module: nn.Module,
            args: Any,
            output: Any,
            computed: dict = computed,
            name: str = name,
            recorded: bool = recorded,
        ) -> None:
            raw = computed.pop("output", output)
            if _replaced(output, raw, recorded, tracer):
                raise _replaced_output_error(
                    f"a forward hook on {name or 'the model'} ({type(module).__name__})"
                )

        handles.append(module.register_forward_hook(scope.only(note), prepend=True))
        handles.append(module.register_forward_hook(scope.only(compare)))


def _refuse_globally_replaced_outputs(
    cam: IntegrativeCAM,
    scope: CallScope,
    handles: list[Any],
    tracer: StageTracer,
    chosen: list[nn.Module],
) -> None:
    """Refuse, as it runs, a global forward hook that replaces a module's output.

    As `_refuse_replaced_outputs` does for a module's own hooks, for the hooks of
    ``register_module_forward_hook``, which run before any module's own: one hook put first
    among them notes the output, one put last compares.
    """
    hooks = module_registry._global_forward_hooks  # an OrderedDict, by handle id
    if not hooks:
        return
    computed: dict[str, Any] = {}

    def note(module: nn.Module, args: Any, output: Any) -> None:
        computed["output"] = output

    def compare(module: nn.Module, args: Any, output: Any) -> None:
        raw = computed.pop("output", output)
        if _replaced(output, raw, any(module is layer for layer in chosen), tracer):
            raise _replaced_output_error(
                f"a global forward hook (register_module_forward_hook) on "
                f"{cam._layer_name(module)} ({type(module).__name__})"
            )

    first = register_module_forward_hook(scope.only(note))
    handles.append(first)
    hooks.move_to_end(first.id, last=False)  # before the user's: the output as computed
    handles.append(register_module_forward_hook(scope.only(compare)))


def _replaced(output: Any, raw: Any, recorded: bool, tracer: StageTracer) -> bool:
    """Whether hooks made ``output`` of a module whose forward returned ``raw``, unseen.

    A chosen layer's own output is recorded after every hook (its map is the hooked
    output's), unless it ends a traced convolution chain, whose bias term a hook would not
    change.
    """
    return output is not raw and not (recorded and not tracer.in_chain(raw))


def _replaced_output_error(hook: str) -> ValueError:
    """The error for ``hook`` (its description), which replaced a module's output."""
    return ValueError(
        f"{hook} replaces its output: Integrative CAM traces the operations the layers compute "
        "and cannot see what the hook does (its maps would be those of the model without "
        "it); remove the hook, or build what it does into the model (e.g. zero the pruned "
        "channels' weights)"
    )


def _first_index(item: tuple[tuple[int, str, Tensor], bool]) -> int:
    """The stage index of a ``((index, name, flags), row)`` pair: stages in forward order."""
    return item[0][0]
