"""Captum attribution answered by a trained Explainer in one forward pass."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn

from ctc_plugin.concurrency import eval_mode, holds_model
from ctc_plugin.explainer.network import Explainer

TargetType = int | tuple[int, ...] | Tensor | Sequence[int | tuple[int, ...]] | None


def targets_to_indices(target: TargetType, num_examples: int, num_classes: int) -> Tensor:
    """Turn any Captum target form into one class index per example.

    Accepted (as in Captum for ``(N, C)`` outputs): an int; a 1-tuple ``(c,)``; a 0-d tensor;
    a 1-d tensor of length 1 or ``N``; a list of ``N`` ints or 1-tuples.

    Raises:
        ValueError: For another form, a wrong length or a class out of range.
    """
    if isinstance(target, tuple):
        if len(target) != 1:
            raise ValueError(
                f"a tuple target indexes the (N, C) output with one class, got {target!r}"
            )
        target = target[0]
    if isinstance(target, Tensor):
        indices = target.detach().reshape(-1).long().cpu()
    elif isinstance(target, int):
        indices = torch.tensor([target])
    elif isinstance(target, list):
        flat = [t[0] if isinstance(t, tuple) and len(t) == 1 else t for t in target]
        if not all(isinstance(t, int) for t in flat):
            raise ValueError(f"a list target must hold ints or 1-tuples, got {target!r}")
        indices = torch.tensor(flat, dtype=torch.long)
    else:
        raise ValueError(
            f"unsupported target {target!r}: give None, an int, a (c,) tuple, a tensor or a list"
        )
    if indices.numel() == 1:
        indices = indices.expand(num_examples)
    if indices.numel() != num_examples:
        raise ValueError(f"got {indices.numel()} targets for {num_examples} inputs")
    if indices.numel() and (indices.min() < 0 or indices.max() >= num_classes):
        raise ValueError(f"target classes must lie in [0, {num_classes}), got {indices.tolist()}")
    return indices


class ExplainerAttribution(Attribution):
    """Captum attribution whose answer is the explainer's mask for the target class.

    One explainer forward pass per batch, under ``torch.no_grad``: the mask of any class
    (not only the predicted one) is ``sigmoid`` of that class's logit map, broadcast over the
    input's channels. The explainer is fed a channels-last copy of the images (faster thin
    convolutions and bilinear upsampling on CPU; the same values up to float rounding).

    Threads: one instance, classifier and explainer may serve several threads at once; each
    call gives exactly what it gives alone. Calls only read the classifier and run
    concurrently. An explainer in eval mode is only read too; one in training mode is switched
    to eval mode for the call and back, holding it exclusively, so such calls take turns (see
    :mod:`ctc_plugin.concurrency`).

    Args:
        classifier: The model the explainer was trained for (used to find the predicted class
            when ``target`` is None, and to check the class count).
        explainer: A trained :class:`~ctc_plugin.explainer.network.Explainer`.

    Raises:
        TypeError: If ``explainer`` is not an :class:`Explainer`.
    """

    def __init__(self, classifier: nn.Module, explainer: Explainer) -> None:
        if not isinstance(explainer, Explainer):
            raise TypeError(f"explainer must be an Explainer, got {type(explainer).__name__}")
        super().__init__(classifier)
        self.classifier = classifier
        self.explainer = explainer
        self._classes_checked = False

    def has_convergence_delta(self) -> bool:
        """Return False: the masks have no convergence delta."""
        return False

    def _check_inputs(self, images: Tensor) -> None:
        """Raise a clear error for inputs the explainer cannot take."""
        expected = self.explainer.in_channels
        if images.dim() != 4 or images.shape[1] != expected:
            raise ValueError(
                f"inputs must be images shaped (N, {expected}, H, W), got {tuple(images.shape)}"
            )
        size = self.explainer.trained_image_size
        if size is not None and tuple(images.shape[-2:]) != size:
            raise ValueError(
                f"the explainer was trained on {size[0]}x{size[1]} images but got "
                f"{images.shape[-2]}x{images.shape[-1]}; resize the inputs to the training size "
                "or train an explainer for this size"
            )
        if not self.explainer.is_trained:
            warnings.warn(
                "the explainer has not been trained (call Explainer.fit or load trained "
                "weights): its masks are meaningless",
                UserWarning,
                stacklevel=3,
            )

    def _classify(self, images: Tensor, additional_forward_args: Any) -> Tensor:
        """Run the classifier and check its class count against the explainer's."""
        extra = () if additional_forward_args is None else additional_forward_args
        extra = extra if isinstance(extra, tuple) else (extra,)
        scores = self.forward_func(images, *extra)
        if scores.dim() != 2 or scores.shape[1] != self.explainer.num_classes:
            raise ValueError(
                f"class-count mismatch: the explainer has {self.explainer.num_classes} classes "
                f"but the classifier returns outputs shaped {tuple(scores.shape)}; use an "
                "explainer trained for this classifier"
            )
        self._classes_checked = True
        return scores

    @log_usage()
    @holds_model()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> Tensor | tuple[Tensor]:
        """Return the explainer's mask of the target class, shaped like ``inputs``.

        Args:
            inputs: Images ``(N, C, H, W)`` (or a 1-tuple holding them) in the form the
                classifier takes.
            target: The class per example, in any Captum form (int, ``(c,)``, tensor, list);
                ``None`` explains the classifier's predicted class.
            additional_forward_args: Extra arguments of the classifier (used only to find the
                predicted class and check the class count).

        Returns:
            Masks in ``[0, 1]`` broadcast to the input's shape (a 1-tuple if the input was).

        Raises:
            ValueError: For a class-count mismatch, a wrong input shape or size, or a bad target.
        """
        as_tuple = isinstance(inputs, tuple)
        if as_tuple and len(inputs) != 1:
            raise ValueError(f"ExplainerAttribution takes one input tensor, got {len(inputs)}")
        images = inputs[0] if as_tuple else inputs
        self._check_inputs(images)
        with eval_mode(self.explainer):  # switched (and held exclusively) only when needed
            with torch.no_grad():
                if target is None:
                    target = self._classify(images, additional_forward_args).argmax(dim=1)
                elif not self._classes_checked:
                    self._classify(images[:1], additional_forward_args)
                indices = targets_to_indices(target, len(images), self.explainer.num_classes)
                fast = images.contiguous(memory_format=self.explainer.input_memory_format)
                masks = self.explainer.target_logits(fast, indices).sigmoid()
        result = masks.expand_as(images).to(images.dtype).contiguous()
        return (result,) if as_tuple else result
