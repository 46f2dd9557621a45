"""Integrative CAM with pytorch-grad-cam's face: its targets, ``show_cam_on_image`` and metrics.

Needs the optional ``grad-cam`` distribution (``pip install grad-cam``); importing this module
without it raises an ImportError that says so. The rest of ``ctc_plugin`` does not import it.

Examples:
    >>> from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    >>> from ctc_plugin.adapters.gradcam import IntegrativeGradCAM
    >>> with IntegrativeGradCAM(model) as cam:
    ...     maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(3)] * len(images))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ctc_plugin.cam.alpha import Phi
from ctc_plugin.cam.calibration import LayerScore
from ctc_plugin.cam.integrative import IntegrativeCAM
from ctc_plugin.concurrency import CallScope, PerThread, exclusive, shared
from ctc_plugin.wording import counted

try:
    from pytorch_grad_cam.base_cam import BaseCAM
except ImportError as error:  # pragma: no cover - exercised only without the optional extra
    raise ImportError(
        "ctc_plugin.adapters.gradcam needs pytorch-grad-cam; install it with `pip install grad-cam`"
    ) from error


class IntegrativeGradCAM(BaseCAM):
    """Integrative CAM as a pytorch-grad-cam method (a ``BaseCAM`` subclass).

    Called like every pytorch-grad-cam method, ``cam(input_tensor, targets)``, it returns a
    float32 NumPy array (N, H, W) in [0, 1], and afterwards ``cam.outputs`` holds the model's
    output on the batch (detached), as ``BaseCAM.forward`` sets it. ``targets`` follow
    pytorch-grad-cam: one callable per example, applied to that example's output row and
    returning one score (``ClassifierOutputTarget``, ``ClassifierOutputSoftmaxTarget``,
    ``ClassifierOutputReST``, your own function; ``RawScoresOutputTarget`` and
    ``BinaryClassifierOutputTarget`` on a model with one output per example), or None for each
    example's top-scoring class. A target that returns more than one value (e.g.
    ``RawScoresOutputTarget`` on a multi-class model, where pytorch-grad-cam's own backward
    fails too) or fails on the output row raises a ``ValueError`` naming it.
    ``aug_smooth=True`` works as for the other methods.

    As every pytorch-grad-cam method does, the constructor puts the model in eval mode (holding
    it exclusively meanwhile, so no call of this package on it sees the switch); it checks its
    arguments first, so a refused construction leaves the model's mode as it was.

    Threads: one instance and one model may serve several threads at once; each call gives
    exactly what it gives alone, calls run concurrently as those of
    [`IntegrativeCAM`][ctc_plugin.IntegrativeCAM] do, and ``cam.outputs`` holds the output
    of the calling thread's last call.

    The first three arguments are pytorch-grad-cam's, in its order (``GradCAM(model,
    target_layers, reshape_transform)``); Integrative CAM's own are keyword-only.

    Args:
        model: The classifier.
        target_layers: Modules to explain; None (the default) uses every convolutional stage.
        reshape_transform: As in pytorch-grad-cam: turns each target layer's output (and its
            gradient) into an (N, C, H, W) map, e.g. for a vision transformer's token maps
            ([`tokens_to_grid`][ctc_plugin.cam.tokens_to_grid]).
        phi: See [`IntegrativeCAM`][ctc_plugin.IntegrativeCAM].
        bias: See [`IntegrativeCAM`][ctc_plugin.IntegrativeCAM].
        layer_weights: See [`IntegrativeCAM`][ctc_plugin.IntegrativeCAM].
        tta_transforms: As in pytorch-grad-cam: the ttach transforms ``aug_smooth=True``
            averages over (None: its default ones).

    Attributes:
        outputs: The model's output on this thread's last batch, (N, classes), or None before
            any call.

    Raises:
        ValueError: ``target_layers=[]``, and the arguments
            [`IntegrativeCAM`][ctc_plugin.IntegrativeCAM] refuses (as it says).
        TypeError: As [`IntegrativeCAM`][ctc_plugin.IntegrativeCAM] says.
    """

    outputs = PerThread()

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        *,
        phi: str | Phi | Callable[[Tensor], Tensor] = "exp",
        bias: bool = True,
        layer_weights: Literal["adaptive", "uniform"] | LayerScore = "adaptive",
        tta_transforms: Any = None,
    ) -> None:
        # Checks every argument before BaseCAM switches the model to eval mode, so that a
        # refused construction leaves the model as it was.
        if isinstance(target_layers, list | tuple) and not target_layers:
            raise ValueError("target_layers is empty; pass None to fuse every convolutional stage")
        integrative = IntegrativeCAM(
            model,
            layers=target_layers,
            phi=phi,
            bias=bias,
            layer_weights=layer_weights,
            reshape_transform=reshape_transform,
        )
        # pytorch-grad-cam's own activation hooks are not used: pass no layers to BaseCAM.
        with exclusive(model):  # BaseCAM switches the model to eval mode
            super().__init__(
                model, target_layers=[], uses_gradients=True, tta_transforms=tta_transforms
            )
        self.target_layers = list(integrative.layers or [])
        self.integrative = integrative
        self.reshape_transform = reshape_transform

    def __del__(self) -> None:
        """Release pytorch-grad-cam's hooks, if its constructor got as far as making them.

        ``BaseCAM.__del__`` assumes it did: after a refused construction (an unknown keyword
        such as the old ``use_cuda``, a bad ``phi``) it would report an AttributeError of its own
        on top of the real error.
        """
        if "activations_and_grads" in vars(self):
            super().__del__()

    def forward(
        self,
        input_tensor: Tensor,
        targets: Sequence[Callable[[Tensor], Tensor]] | None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """Return the maps of a batch as a float32 array (N, H, W) in [0, 1]; set ``outputs``.

        Args:
            input_tensor: Images (N, C, H, W).
            targets: One pytorch-grad-cam target per example (a callable of the example's
                output row returning one score), or None for each example's top class.
            eigen_smooth: Not supported (the fused map has no channel dimension to project).

        Raises:
            TypeError: If ``targets`` is no list (a single target, a class index).
            ValueError: If ``eigen_smooth`` is set, ``targets`` does not give one target per
                example, or a target fails on its output row or returns more than one value.
        """
        if eigen_smooth:
            raise ValueError("IntegrativeGradCAM does not support eigen_smooth")
        input_tensor = input_tensor.to(self.device)
        if targets is not None and (callable(targets) or not isinstance(targets, Iterable)):
            raise TypeError(
                f"targets must be a list with one pytorch-grad-cam target per image, got a "
                f"{type(targets).__name__}: pass [ClassifierOutputTarget(c) for c in classes] "
                "(one per image), or targets=None for each image's top class"
            )
        target = None if targets is None else list(targets)
        if target is not None and len(target) != len(input_tensor):
            raise ValueError(
                f"got {counted(len(target), 'target')} for {counted(len(input_tensor), 'image')}; "
                "give one pytorch-grad-cam target per image, or targets=None for the top class"
            )
        seen: list[Tensor] = []

        def record(module: nn.Module, args: tuple, output: Tensor) -> None:
            if isinstance(output, Tensor):
                seen.append(output.detach())

        scope = CallScope()  # record this call's forward pass, not other threads' passes
        with shared(self.model):
            handle = self.model.register_forward_hook(scope.only(record))
            try:
                with scope:
                    maps = self.integrative.attribute(input_tensor, target=target)
            finally:
                handle.remove()
        self.outputs = seen[-1] if seen else None
        with torch.no_grad():
            return maps[:, 0].detach().cpu().numpy().astype(np.float32)
