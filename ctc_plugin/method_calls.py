"""How each method is called: the library call and its settings, written once.

The ``explain`` command's methods (``ctc_plugin.commands.methods``) and the benchmark's
(``ctc_plugin.harness.methods``) are views of these calls. A view adapts the signature and
the output (one image and its segment scores; a batch and ``(N, 1, H, W)`` maps), catches what
it refuses in its own words, and passes the options it has (the command's
``--lime-samples``, ``--perturbations-per-eval`` and progress bars; the benchmark's
``n_samples``), but writes no setting of a method itself: Captum's ``FeatureAblation``,
``Lime`` and ``KernelShap`` with their baselines, samples, seed and copies per pass, CTC's
bias sharing, Integrative CAM, the Explainer, and each Grad-CAM.

Where the two differ on purpose, both variants are here under their own names: Grad-CAM is
Captum's ``LayerGradCam`` in the command (`captum_grad_cam`) and pytorch-grad-cam in the
benchmark (`pytorch_grad_cam`), both on the layer ``ctc_plugin.cam`` chooses; the benchmark's
Lime and KernelShap send `SAMPLER_PERTURBATIONS_PER_EVAL` copies per pass, the command's
methods `PERTURBATIONS_PER_EVAL` (its option's default).

This module imports nothing heavy at the top: the command line reads its defaults while it
parses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import Tensor, nn

__all__ = [
    "PERTURBATIONS_PER_EVAL",
    "SAMPLER_PERTURBATIONS_PER_EVAL",
    "SAMPLES",
    "SAMPLING_SEED",
    "seeded_draws",
    "CaptumFeatureMethod",
    "FEATURE_ABLATION",
    "LIME",
    "KERNEL_SHAP",
    "ctc",
    "integrative_cam",
    "explainer_maps",
    "captum_grad_cam",
    "pytorch_grad_cam",
]

#: Copies of the image per forward pass of FeatureAblation (and the command's default for its
#: feature methods, ``--perturbations-per-eval``).
PERTURBATIONS_PER_EVAL = 16

#: Copies per forward pass of the benchmark's Lime and KernelShap.
SAMPLER_PERTURBATIONS_PER_EVAL = 32

#: Samples of Lime and KernelShap (the command's ``--lime-samples``, the benchmark's
#: ``n_samples``, by default).
SAMPLES = 100

#: Seed of the samples Lime and KernelShap draw for each image.
SAMPLING_SEED = 0


@contextmanager
def seeded_draws(seed: int, device: torch.device) -> Iterator[None]:
    """Within the block, torch's random draws (on ``device`` too) start from ``seed``.

    Inside ``torch.random.fork_rng``: the caller's random state is as it was afterwards. A
    method that samples (Lime, KernelShap) then draws the same samples in every call.
    """
    import torch

    devices = []
    if device.type == "cuda":  # a bare "cuda" is the current device, not always the first
        devices = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@dataclass(frozen=True)
class CaptumFeatureMethod:
    """A Captum feature method (``FeatureAblation``, ``Lime``, ``KernelShap``) and its settings.

    Attributes:
        name: The class in ``captum.attr``.
        perturbations_per_eval: Perturbed copies of the image per forward pass.
        n_samples: Samples of a method that samples (Lime, KernelShap); ``None`` for one that
            does not (FeatureAblation).
        sampling_seed: A method that samples draws its samples from torch's generator seeded
            with it, inside ``torch.random.fork_rng`` (the caller's random state is left as it
            was): the same image and features give the same map in every call, so robustness
            metrics measure how the map follows the input and the model, not the sampling
            noise of two draws (common random numbers). ``None`` draws from torch's generator
            as it stands.
        baselines: What a feature is replaced by: 0, black in image space.
    """

    name: str
    perturbations_per_eval: int = PERTURBATIONS_PER_EVAL
    n_samples: int | None = None
    sampling_seed: int | None = None
    baselines: float = 0.0

    @property
    def per_image(self) -> bool:
        """Whether the method explains each image of a batch alone.

        A method that samples does, so that each image's samples are drawn from the seed,
        whatever else is in the batch.
        """
        return self.n_samples is not None

    def but(self, **changes: Any) -> CaptumFeatureMethod:
        """These settings with ``changes`` (the options a view passes, e.g. ``n_samples``)."""
        return dataclasses.replace(self, **changes)

    def attribute(
        self,
        model: nn.Module,
        images: Tensor,
        target: Any,
        feature_mask: Tensor,
        *,
        show_progress: bool = False,
    ) -> Tensor:
        """Captum's attributions of ``images`` (shaped like them) with these settings.

        A model with a BatchNorm that keeps no running statistics normalises each batch with
        that batch's own statistics, which would mix the perturbed copies (and the images) of
        one pass: each image is then explained alone, one copy per pass, so that each copy
        gets what the model computes for it alone (with one copy per pass too, Captum sends
        every image of the batch in each pass).

        Args:
            model: The classifier.
            images: The batch to explain.
            target: Captum's target (an int, or one class per image).
            feature_mask: Feature ids, broadcastable to ``images``.
            show_progress: Show Captum's progress bar.
        """
        import torch

        from ctc_plugin.batchnorm import keeps_no_running_statistics

        if (self.perturbations_per_eval > 1 or len(images) > 1) and any(
            map(keeps_no_running_statistics, model.modules())
        ):
            alone = self.but(perturbations_per_eval=1)
            masks = feature_mask.expand(len(images), *feature_mask.shape[1:])
            return torch.cat(
                [
                    alone.attribute(
                        model,
                        images[i : i + 1],
                        _target_of(target, i),
                        masks[i : i + 1],
                        show_progress=show_progress,
                    )
                    for i in range(len(images))
                ]
            )
        from captum import attr

        options: dict[str, Any] = {"perturbations_per_eval": self.perturbations_per_eval}
        if self.n_samples is not None:
            options["n_samples"] = self.n_samples
        drawing = (
            nullcontext()
            if self.sampling_seed is None
            else seeded_draws(self.sampling_seed, images.device)
        )
        with drawing:
            return getattr(attr, self.name)(model).attribute(
                images,
                target=target,
                feature_mask=feature_mask,
                baselines=self.baselines,
                show_progress=show_progress,
                **options,
            )


def _target_of(target: Any, index: int) -> Any:
    """Captum's ``target`` for image ``index`` alone.

    One of a per-image list or tensor; an int, a tuple (one index into a many-dimensional
    output) or a one-element tensor is every image's.
    """
    if isinstance(target, list) or (hasattr(target, "numel") and target.numel() > 1):
        return target[index : index + 1]
    return target


#: Captum's FeatureAblation: each feature replaced by 0 (black).
FEATURE_ABLATION = CaptumFeatureMethod("FeatureAblation")

#: Captum's Lime over the features, seeded.
LIME = CaptumFeatureMethod(
    "Lime",
    perturbations_per_eval=SAMPLER_PERTURBATIONS_PER_EVAL,
    n_samples=SAMPLES,
    sampling_seed=SAMPLING_SEED,
)

#: Captum's KernelShap over the features, seeded.
KERNEL_SHAP = LIME.but(name="KernelShap")


def ctc(
    model: nn.Module,
    images: Tensor,
    target: Any,
    feature_mask: Tensor,
    *,
    bias_sharing: str,
    perturbations_per_eval: int | None = None,
    show_progress: bool = False,
) -> Tensor:
    """CTC's attributions (shaped like ``images``) in the bias sharing ``bias_sharing``.

    ``perturbations_per_eval=None`` sends every feature's copy in one pass.
    """
    from ctc_plugin.ctc.attribution import CTC

    return CTC(model, bias_sharing=bias_sharing).attribute(
        images,
        target=target,
        feature_mask=feature_mask,
        perturbations_per_eval=perturbations_per_eval,
        show_progress=show_progress,
    )


def integrative_cam(model: nn.Module, images: Tensor, target: Any) -> Tensor:
    """Integrative CAM's ``(N, 1, H, W)`` maps with its defaults (every stage, bias terms)."""
    from ctc_plugin.cam.integrative import IntegrativeCAM

    return IntegrativeCAM(model).attribute(images, target=target)


def explainer_maps(
    model: nn.Module,
    explainer: nn.Module,
    images: Tensor,
    target: Any,
    *,
    check_classifier: bool = True,
) -> Tensor:
    """The trained ``explainer``'s masks of ``images`` for ``model``'s class ``target``.

    ``check_classifier=False`` where the caller checked once that the explainer was trained
    for this model (the command, where it loads it).
    """
    from ctc_plugin.explainer.attribution import ExplainerAttribution

    attribution = ExplainerAttribution(model, explainer, check_classifier=check_classifier)
    return attribution.attribute(images, target=target)


def captum_grad_cam(model: nn.Module, images: Tensor, target: Any, layer: nn.Module) -> Tensor:
    """Captum's ``LayerGradCam`` of ``layer`` (ReLU applied), upsampled bilinearly to the image.

    The command's Grad-CAM, on
    [`last_spatial_layer`][ctc_plugin.cam.last_spatial_layer], the layer
    [`grad_cam_layer`][ctc_plugin.cam.grad_cam_layer] takes for a CNN.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    cam = LayerGradCam(model, layer).attribute(images, target=target, relu_attributions=True)
    size = tuple(images.shape[-2:])
    return LayerAttribution.interpolate(cam, size, interpolate_mode="bilinear")


def pytorch_grad_cam(cls_name: str, model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
    """pytorch-grad-cam's ``cls_name`` (``GradCAM``, ...) maps ``(N, 1, H, W)`` of ``images``.

    The benchmark's Grad-CAMs, on the layer [`grad_cam_layer`][ctc_plugin.cam.grad_cam_layer]
    names (a vision transformer's last block, or its first norm, with the reshape of its
    tokens; a CNN's [`last_spatial_layer`][ctc_plugin.cam.last_spatial_layer]). The model's
    parameters' ``.grad`` and its modules' training flags are as they were afterwards, and an
    error of the call reaches the caller.
    """
    import pytorch_grad_cam as library
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from ctc_plugin.cam.transformers import grad_cam_layer
    from ctc_plugin.module_state import modes_kept

    layer, reshape = grad_cam_layer(model, images)
    # its model.zero_grad() and loss.backward() set every parameter's .grad: they are put
    # back as they were (a later optimiser step would use them; memory would stay held);
    # its model.eval() is undone module by module (BatchNorms frozen in a training model)
    grads = [(parameter, parameter.grad) for parameter in model.parameters()]
    with modes_kept(model):
        cam = getattr(library, cls_name)(
            model=model, target_layers=[layer], reshape_transform=reshape
        )
        # not its with block: its __exit__ prints and swallows an IndexError (a target out
        # of range), and the caller then met an unassigned result instead of the error
        try:
            maps = cam(
                input_tensor=images,
                targets=[ClassifierOutputTarget(int(t)) for t in target],
            )
        finally:
            cam.activations_and_grads.release()
            for parameter, grad in grads:
                parameter.grad = grad
    return torch.from_numpy(maps).to(images)[:, None]
