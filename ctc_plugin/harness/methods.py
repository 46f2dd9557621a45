"""The explanation methods the benchmark compares, behind one signature.

Every entry is a function ``method(model, images, target, feature_mask) -> (N, 1, H, W)``
(``target``: the class per image, as in Captum; ``targets=``, its earlier name, still works
with a ``FutureWarning``).
Peers are the real library calls (Captum, Zennit, pytorch-grad-cam), not re-implementations;
feature-based methods (Captum's FeatureAblation, Lime, KernelShap and CTC) receive the same
``feature_mask``. Methods that return one value per input channel are reduced to one map:
gradient magnitudes by the maximum over channels (Simonyan et al.), signed relevances by the sum.

Our methods are always in the registry: CTC in each bias-sharing mode, Integrative CAM and, for
zoo models with a shipped Explainer, the Explainer (`explainer_method`).

How each method that the ``explain`` command has too is called (its library call and settings)
is written once, in `ctc_plugin.method_calls`; the entries here adapt it to the signature above.
"""

from __future__ import annotations

import copy
import importlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctc_plugin import method_calls
from ctc_plugin.ctc.modes import BIAS_SHARING_MODES
from ctc_plugin.evaluation.arguments import Method, target_renamed
from ctc_plugin.method_calls import SAMPLES, CaptumFeatureMethod

# named here too (the benchmark's page and scripts name them here); their home is method_calls
from ctc_plugin.method_calls import SAMPLING_SEED as SAMPLING_SEED
from ctc_plugin.method_calls import seeded_draws as seeded_draws

__all__ = [
    "MethodSpec",
    "peer_methods",
    "our_methods",
    "explainer_method",
    "registry",
    "method_names",
]


@dataclass(frozen=True)
class MethodSpec:
    """One method of the benchmark.

    Attributes:
        name: Display name, e.g. ``"Captum IntegratedGradients"``.
        source: Where the implementation comes from (``"captum"``, ``"zennit"``,
            ``"pytorch-grad-cam"``, ``"ctc-plugin"``).
        uses_features: True when the method reads ``feature_mask`` (it then runs once per
            feature source).
        fn: ``fn(model, images, target, feature_mask) -> (N, 1, H, W)``.
        applies_to: Whether the method explains a given model (``None``: every model); a
            method for transformers only is left out of a CNN's run, not reported as failed.
    """

    name: str
    source: str
    uses_features: bool
    fn: Method
    applies_to: Callable[[nn.Module], bool] | None = None


def _leaf(images: Tensor) -> Tensor:
    return images.detach().clone().requires_grad_(True)


def _require_mask(feature_mask: Tensor | None, name: str) -> Tensor:
    if feature_mask is None:
        raise ValueError(f"{name} needs a feature_mask (N, 1, H, W)")
    return feature_mask


def _first_channel(attributions: Tensor) -> Tensor:
    """Feature methods write the feature's score into every channel: keep one."""
    return attributions[:, :1].detach()


def _captum_gradient(cls_name: str, reduce: str, **options: object) -> Method:
    @target_renamed
    def method(
        model: nn.Module, images: Tensor, target: Tensor, feature_mask: Tensor | None
    ) -> Tensor:
        from captum import attr

        explainer = getattr(attr, cls_name)(model)
        out = explainer.attribute(_leaf(images), target=target, **options).detach()
        if reduce == "max":
            return out.abs().amax(dim=1, keepdim=True)
        return out.sum(dim=1, keepdim=True)

    method.__name__ = cls_name
    return method


def _captum_features(call: CaptumFeatureMethod) -> Method:
    """A Captum feature method (FeatureAblation, Lime, KernelShap) on the given features.

    ``call`` holds the method and its settings (`ctc_plugin.method_calls`); a method that
    samples explains each image alone, from its seed (``call.per_image``).
    """

    @target_renamed
    def method(
        model: nn.Module, images: Tensor, target: Tensor, feature_mask: Tensor | None
    ) -> Tensor:
        mask = _require_mask(feature_mask, call.name).expand(len(images), -1, -1, -1)
        if not call.per_image:
            return _first_channel(call.attribute(model, images, target, mask))
        maps = [
            call.attribute(model, images[i : i + 1], int(target[i]), mask[i : i + 1])
            for i in range(len(images))
        ]
        return _first_channel(torch.cat(maps))

    method.__name__ = call.name
    return method


def _zennit(composite_factory: Callable[[list], object], name: str) -> Method:
    """A Zennit method that canonizes BatchNorm only where that keeps the model's function.

    Zennit's ``SequentialMergeBatchNorm`` merges every BatchNorm into the module registered just
    before it, which is wrong for pre-activation blocks (DenseNet: the next layer's BatchNorm
    follows the previous layer's convolution in registration order but not in the data flow).
    The composite runs on a copy of the model; if merging fails or changes the logits, the
    method runs again without canonizers (BatchNorm then passes relevance as a linear layer)
    and warns once.
    """

    @target_renamed
    def method(
        model: nn.Module, images: Tensor, target: Tensor, feature_mask: Tensor | None
    ) -> Tensor:
        from zennit.attribution import Gradient

        from ctc_plugin.canonizers import PositiveEpsMergeBatchNorm

        with torch.no_grad():
            expected = model(images)
        one_hot = F.one_hot(target, expected.shape[1]).to(expected.dtype)
        failure: RuntimeError | None = None
        for canonizers in ([PositiveEpsMergeBatchNorm()], []):
            working = copy.deepcopy(model)  # a failed canonizer must not touch the caller's model
            try:
                with Gradient(model=working, composite=composite_factory(canonizers)) as run:
                    output, relevance = run(images.detach(), one_hot)
            except RuntimeError as error:
                failure = error
                continue
            failure = None  # this attempt ran: its output is judged below
            scale = float(expected.abs().max()) + 1.0  # float32 merge error grows with logits
            if float((output.detach() - expected).abs().max()) <= 1e-3 * scale:
                if not canonizers:
                    _warn_once(f"{name}: BatchNorm merging changed the model; ran without it")
                return relevance.detach().sum(dim=1, keepdim=True)
        reason = (
            f"the last attempt failed: {type(failure).__name__}: {failure}"
            if failure is not None
            else "its relevance pass changed the model's output with and without BatchNorm merged"
        )
        raise RuntimeError(f"{name}: Zennit could not explain this model ({reason})") from failure

    method.__name__ = name
    return method


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _epsilon_plus_flat(canonizers: list) -> object:
    from zennit.composites import EpsilonPlusFlat

    return EpsilonPlusFlat(canonizers=canonizers)


def _alpha1beta0(canonizers: list) -> object:
    from ctc_plugin.features import lrp_alpha1beta0

    return lrp_alpha1beta0(canonizers=canonizers)


def _grad_cam(cls_name: str) -> Method:
    """A pytorch-grad-cam method on the model's last feature map.

    For a vision transformer (blocks of a type
    [`transformer_stages`][ctc_plugin.cam.transformer_stages] knows) that is the layer
    [`grad_cam_layer`][ctc_plugin.cam.grad_cam_layer] names (the last block, or its first norm
    where only the class token is classified, as pytorch-grad-cam's ViT tutorial takes it), with
    pytorch-grad-cam's ``reshape_transform`` turning its tokens into a map; otherwise
    [`last_spatial_layer`][ctc_plugin.cam.last_spatial_layer].
    """

    @target_renamed
    def method(
        model: nn.Module, images: Tensor, target: Tensor, feature_mask: Tensor | None
    ) -> Tensor:
        return method_calls.pytorch_grad_cam(cls_name, model, images, target)

    method.__name__ = cls_name
    return method


def _has_vit_blocks(model: nn.Module) -> bool:
    from torchvision.models.vision_transformer import EncoderBlock

    return any(isinstance(m, EncoderBlock) for m in model.modules())


def _without_attention(model: nn.Module) -> bool:
    """Zennit's composites have no rule for attention: its LRP methods are for CNNs.

    On ``nn.MultiheadAttention`` its hooks fail in the backward pass; on other transformer
    blocks the attention would pass relevance as a plain gradient. AttnLRP (``lxt``) is the
    LRP of transformers.
    """
    from ctc_plugin.cam.transformers import transformer_stages

    return not transformer_stages(model) and not any(
        isinstance(m, nn.MultiheadAttention) for m in model.modules()
    )


@target_renamed
def _attn_lrp(
    model: nn.Module, images: Tensor, target: Tensor, feature_mask: Tensor | None
) -> Tensor:
    """AttnLRP (Achtibat et al., ICML 2024) through ``lxt`` on torchvision's ViT blocks.

    ``lxt`` patches the ``forward`` of torch's ``GELU``, ``LayerNorm`` and
    ``MultiheadAttention`` classes (its CP-LRP map for torchvision's ViT): the relevance is
    then gradient x input. The patch is process-wide, so the classes' methods are restored
    after the call; other methods never see it.
    """
    from lxt.efficient import monkey_patch
    from lxt.efficient.models.vit_torch import cp_LRP
    from torchvision.models import vision_transformer

    saved = {cls: dict(vars(cls)) for cls in cp_LRP}
    try:
        monkey_patch(vision_transformer, cp_LRP)
        leaf = _leaf(images)
        with torch.enable_grad():
            selected = model(leaf).gather(1, target.view(-1, 1)).sum()
            (gradient,) = torch.autograd.grad(selected, leaf)
        return (gradient * leaf).sum(dim=1, keepdim=True).detach()
    finally:
        for cls, attributes in saved.items():
            for name in set(vars(cls)) - set(attributes):
                delattr(cls, name)
            for name, value in attributes.items():
                if vars(cls).get(name) is not value:
                    setattr(cls, name, value)


def peer_methods(n_samples: int = SAMPLES, ig_steps: int = 32) -> list[MethodSpec]:
    """Return the established methods, each a real call into its library.

    Args:
        n_samples: Samples for Captum's Lime and KernelShap.
        ig_steps: Integration steps of Captum's IntegratedGradients.
    """
    return [
        MethodSpec("Saliency", "captum", False, _captum_gradient("Saliency", "max", abs=True)),
        MethodSpec("InputXGradient", "captum", False, _captum_gradient("InputXGradient", "sum")),
        MethodSpec(
            "IntegratedGradients",
            "captum",
            False,
            _captum_gradient(
                "IntegratedGradients", "sum", n_steps=ig_steps, internal_batch_size=ig_steps * 4
            ),
        ),
        *(
            MethodSpec(call.name, "captum", True, _captum_features(call))
            for call in (
                method_calls.FEATURE_ABLATION,
                method_calls.LIME.but(n_samples=n_samples),
                method_calls.KERNEL_SHAP.but(n_samples=n_samples),
            )
        ),
        MethodSpec(
            "LRP-EpsilonPlusFlat",
            "zennit",
            False,
            _zennit(_epsilon_plus_flat, "LRP-EpsilonPlusFlat"),
            applies_to=_without_attention,
        ),
        MethodSpec(
            "LRP-alpha1beta0",
            "zennit",
            False,
            _zennit(_alpha1beta0, "LRP-alpha1beta0"),
            applies_to=_without_attention,
        ),
        MethodSpec("GradCAM", "pytorch-grad-cam", False, _grad_cam("GradCAM")),
        MethodSpec("GradCAM++", "pytorch-grad-cam", False, _grad_cam("GradCAMPlusPlus")),
        MethodSpec("LayerCAM", "pytorch-grad-cam", False, _grad_cam("LayerCAM")),
        *(
            [MethodSpec("AttnLRP", "lxt", False, _attn_lrp, applies_to=_has_vit_blocks)]
            if _available("lxt")
            else []
        ),
    ]


def _available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and module.startswith(error.name):
            return False
        raise
    return True


def _ctc(mode: str) -> Method:
    @target_renamed
    def method(
        model: nn.Module, images: Tensor, target: Tensor, feature_mask: Tensor | None
    ) -> Tensor:
        mask = _require_mask(feature_mask, "CTC")
        return _first_channel(method_calls.ctc(model, images, target, mask, bias_sharing=mode))

    method.__name__ = f"CTC_{mode}"
    return method


@target_renamed
def _integrative_cam(
    model: nn.Module, images: Tensor, target: Tensor, feature_mask: Tensor | None
) -> Tensor:
    return method_calls.integrative_cam(model, images, target).detach()


def explainer_method(explainer: nn.Module, name: str = "Explainer") -> Method:
    """Wrap a trained Explainer network (e.g. ``zoo.load_explainer(family, split)``).

    The Explainer belongs to one classifier, so this method is built per model.
    """

    @target_renamed
    def method(
        model: nn.Module, images: Tensor, target: Tensor, feature_mask: Tensor | None
    ) -> Tensor:
        return method_calls.explainer_maps(model, explainer, images, target)[:, :1].detach()

    method.__name__ = name
    return method


#: Method names of the kinds of shipped Explainer (see ``ctc_plugin.zoo.explainers.KINDS``).
EXPLAINER_METHODS = {
    "default": "Explainer",
    "class-specific": "Explainer-class-specific",
    "distilled": "Explainer-distilled",
}


def our_methods(
    explainer: nn.Module | None = None, explainers: Mapping[str, nn.Module] | None = None
) -> list[MethodSpec]:
    """Return ctc-plugin's methods: CTC in each bias-sharing mode, Integrative CAM, Explainers.

    Args:
        explainer: A trained Explainer for the model under test (the ``"default"`` kind);
            without one the Explainer is left out.
        explainers: Trained Explainers of other kinds by kind (``"class-specific"``,
            ``"distilled"``); each becomes the method ``EXPLAINER_METHODS[kind]``.

    Raises:
        ValueError: For a kind not in ``EXPLAINER_METHODS``.
    """
    specs = [
        *(MethodSpec(f"CTC-{mode}", "ctc-plugin", True, _ctc(mode)) for mode in BIAS_SHARING_MODES),
        MethodSpec("IntegrativeCAM", "ctc-plugin", False, _integrative_cam),
    ]
    by_kind = {"default": explainer, **(explainers or {})}
    unknown = set(by_kind) - set(EXPLAINER_METHODS)
    if unknown:
        kinds = list(EXPLAINER_METHODS)
        raise ValueError(f"unknown explainer kinds {sorted(unknown)}; use {kinds}")
    for kind, trained in by_kind.items():
        if trained is not None:
            name = EXPLAINER_METHODS[kind]
            specs.append(MethodSpec(name, "ctc-plugin", False, explainer_method(trained, name)))
    return specs


def registry(
    explainer: nn.Module | None = None,
    n_samples: int = SAMPLES,
    ig_steps: int = 32,
    explainers: Mapping[str, nn.Module] | None = None,
) -> dict[str, MethodSpec]:
    """Return every available method by name: ours first, then the peers.

    Args:
        explainer: Trained Explainer for the model under test (optional).
        n_samples: Samples for Lime and KernelShap.
        ig_steps: Steps of IntegratedGradients.
        explainers: Trained Explainers of other kinds by kind (optional, see
            [`our_methods`][ctc_plugin.harness.methods.our_methods]).
    """
    ours = our_methods(explainer, explainers)
    specs = ours + peer_methods(n_samples=n_samples, ig_steps=ig_steps)
    return {spec.name: spec for spec in specs}


def method_names() -> list[str]:
    """Every method name the benchmark knows, in report order (Explainer kinds included)."""
    names = list(registry())
    return names + [name for name in EXPLAINER_METHODS.values() if name not in names]
