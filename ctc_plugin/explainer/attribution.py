"""Captum attribution answered by a trained Explainer in one forward pass."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn

from ctc_plugin.concurrency import eval_mode, holds_model, model_of
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.inputs import (
    check_eval_mode,
    check_inputs,
    check_model_has_values,
    dtype_mismatch_explained,
    example_rows,
    exported_graph,
    floating_dtype,
    training_modules_refused,
)
from ctc_plugin.module_paths import unwrapped
from ctc_plugin.module_state import DigestMemo, compiled_code_eager
from ctc_plugin.targets import TargetType, class_indices, output_not_a_tensor
from ctc_plugin.wording import caller_stacklevel


class ClassifierMismatchWarning(UserWarning):
    """An Explainer explains a classifier whose weights are not those it was trained for."""


class ExplainerAttribution(Attribution):
    """Captum attribution whose answer is the explainer's mask for the target class.

    One explainer forward pass per batch, under ``torch.no_grad``: the mask of any class
    (not only the predicted one) is ``sigmoid`` of that class's logit map, broadcast over the
    input's channels. The explainer is fed the images in the memory format its backbone runs
    fastest in ([`Explainer.input_memory_format`][ctc_plugin.Explainer.input_memory_format]:
    channels-last for classifier-based backbones, contiguous for the small U-Net; the same
    values up to float rounding).

    Threads: one instance, classifier and explainer may serve several threads at once; each
    call gives exactly what it gives alone. Calls only read the classifier and run
    concurrently. An explainer in eval mode is only read too; one in training mode is switched
    to eval mode for the call and back, holding it exclusively, so such calls take turns (see
    [`ctc_plugin.concurrency`][ctc_plugin.concurrency]).

    Args:
        classifier: The model the explainer was trained for (used to find the predicted class
            when ``target`` is None, and to check the class count), in eval mode: one with
            BatchNorm or dropout in training mode is refused, as [`CTC`][ctc_plugin.CTC] does,
            so that explaining never changes it.
        explainer: A trained [`Explainer`][ctc_plugin.Explainer].
        check_classifier: Warn (`ClassifierMismatchWarning`) when ``classifier``'s weights are
            not those the explainer was trained for
            ([`Explainer.trained_for`][ctc_plugin.Explainer.trained_for], recorded by ``fit``
            and the distillation): its masks show what that classifier uses, not this one.
            A float16, bfloat16 or float64 copy of it, and one inside ``nn.DataParallel``,
            ``DistributedDataParallel`` or ``torch.compile``, is the same classifier.
            Checked at the first call and again after the weights change; explainers whose
            classifier is unknown (files of older versions) are not checked. ``False`` for
            a deliberate pairing (e.g. a sanity check's randomised copies). The check keeps
            views of a few values of each weight tensor
            ([`WeightsWatch`][ctc_plugin.module_state.WeightsWatch]), which hold that tensor's
            memory: after ``classifier.to(...)`` or ``.half()`` the old copy is let go at the
            next call (or with this object); ``False`` keeps nothing.

    Raises:
        TypeError: If ``explainer`` is not an [`Explainer`][ctc_plugin.Explainer].
    """

    def __init__(
        self, classifier: nn.Module, explainer: Explainer, check_classifier: bool = True
    ) -> None:
        explainer = unwrapped(explainer)  # also a compiled one: its own module
        if not isinstance(explainer, Explainer):
            raise TypeError(f"explainer must be an Explainer, got {type(explainer).__name__}")
        classifier = unwrapped(classifier)  # the model inside torch's wrappers
        super().__init__(classifier)
        self.classifier = classifier
        self.explainer = explainer
        self.check_classifier = check_classifier
        #: The (dtype, device) of the inputs the classifier last took without extra arguments:
        #: with a target, the classifier runs on one example only where these change.
        self._checked_inputs: tuple[torch.dtype, torch.device] | None = None
        self._digest = DigestMemo()  # of the classifier
        self._expected: tuple[tuple[int, int], tuple[str, ...]] | None = None

    def has_convergence_delta(self) -> bool:
        """Return False: the masks have no convergence delta."""
        return False

    def _check_fits(self, images: Tensor) -> None:
        """Raise a clear error for images of another size than the explainer was trained on."""
        size = self.explainer.trained_image_size
        if size is not None and tuple(images.shape[-2:]) != size:
            raise ValueError(
                f"the explainer was trained on {size[0]}x{size[1]} images but got "
                f"{images.shape[-2]}x{images.shape[-1]}; resize the inputs to the training size, "
                "or train an explainer for this size (one trained on images of several sizes "
                "takes any size)"
            )
        if not self.explainer.is_trained:
            warnings.warn(
                "the explainer has not been trained (call Explainer.fit or load trained "
                "weights): its masks are meaningless",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )

    def _warn_if_other_classifier(self) -> None:
        """Warn when the classifier's weights differ from those the explainer was trained for."""
        if not self.check_classifier:
            return
        expected = self._expected_digests()
        model = model_of(self.classifier)  # a lambda's or a partial's model is unknown
        if not expected or model is None:
            return
        digest = self._digest.digest(model)
        if digest not in expected:
            warnings.warn(
                ClassifierMismatchWarning(
                    "the explainer was trained for a classifier with other weights "
                    f"(state-dict digest {expected[0][:12]} there, {digest[:12]} here): its "
                    "masks show what that classifier uses, not this one. Pass the classifier "
                    "it was trained for, or train an explainer for this one (Explainer.fit); "
                    "check_classifier=False silences this for a deliberate pairing"
                ),
                stacklevel=caller_stacklevel(),
            )

    def _expected_digests(self) -> tuple[str, ...]:
        """The explainer's `trained_for_digests`, read again only after its record changes.

        The record may sit on a GPU: reading it every call would wait for the device. One made
        under ``torch.inference_mode()`` (an explainer loaded there) keeps no version counter and
        is read every call.
        """
        record = self.explainer.classifier_digest
        if record.is_inference():
            return self.explainer.trained_for_digests()
        key = (record.data_ptr(), record._version)
        if self._expected is None or self._expected[0] != key:
            self._expected = (key, self.explainer.trained_for_digests())
        return self._expected[1]

    def _explainer_dtype(self, images: Tensor) -> torch.dtype:
        """The floating dtype the explainer computes in: its parameters' (the images' if none)."""
        return floating_dtype(self.explainer) or images.dtype

    def _classify(self, images: Tensor, additional_forward_args: Any) -> Tensor:
        """Run the classifier and check its class count against the explainer's."""
        extra = () if additional_forward_args is None else additional_forward_args
        extra = extra if isinstance(extra, tuple) else (extra,)
        with compiled_code_eager():  # a classifier compiled in place: the model's numbers
            # a copy: a model may change its input in place, which would change the caller's
            # images and those the explainer reads next
            try:
                scores = self.forward_func(images.clone(), *extra)
            except AssertionError as error:  # an exported program's guard on its input shapes
                if exported_graph(self.forward_func) is None:
                    raise
                raise ValueError(
                    f"the classifier, an exported program's module, refused images of shape "
                    f"{tuple(images.shape)} ({error}): it keeps the input shapes it was exported "
                    "with, and ExplainerAttribution runs it on one image where it reads the "
                    "class count (with a target) or on the whole batch (without); export it with "
                    "a dynamic batch dimension, torch.export.export(model, (x,), "
                    "dynamic_shapes={'x': {0: torch.export.Dim('batch')}}), or pass the "
                    "original model"
                ) from error
        if not isinstance(scores, Tensor):
            raise output_not_a_tensor(scores)
        # (C,) or (): a squeeze() of a batch of one; (1,) is one score per image, any batch
        if scores.dim() < 2 and len(images) == 1 and tuple(scores.shape) != (1,):
            raise ValueError(
                f"the classifier returned shape {tuple(scores.shape)} for one image: it drops "
                "the batch dimension of a batch of 1 (a squeeze() in its forward), and "
                "ExplainerAttribution runs it on one image to read its class count (with a "
                "target) or the predicted class; keep the batch dimension first, (1, classes) "
                "(squeeze(-1) or flatten(1) in place of squeeze())"
            )
        if scores.dim() != 2 or scores.shape[1] != self.explainer.num_classes:
            raise ValueError(
                f"class-count mismatch: the explainer has {self.explainer.num_classes} classes "
                f"but the classifier returns outputs shaped {tuple(scores.shape)}; use an "
                "explainer trained for this classifier"
            )
        return scores

    def _predicted(self, images: Tensor, additional_forward_args: Any) -> Tensor:
        """The classifier's predicted class per image; refused where its scores are not finite.

        The argmax of NaN scores is an arbitrary class, whose masks would look like any other.
        """
        scores = self._classify(images, additional_forward_args)
        bad = (~scores.isfinite().all(dim=1)).nonzero().flatten().tolist()
        if bad:
            shown = ", ".join(str(i) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise ValueError(
                f"the classifier's scores are NaN or infinite for example{'s' * (len(bad) > 1)} "
                f"{shown}: their predicted class (target=None) is undefined; check the model "
                "and its inputs, or pass the classes to explain as target="
            )
        return scores.argmax(dim=1)

    @log_usage()
    @holds_model()
    @dtype_mismatch_explained
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
                predicted class and check the class count). With a target, the classifier runs
                on one example to check its class count: on every call that passes extra
                arguments, else when the inputs' dtype or device is new to this object.

        Returns:
            Masks in ``[0, 1]`` broadcast to the input's shape (a 1-tuple if the input was), in
            the input's dtype: the classifier gets the inputs as they are, the explainer a copy
            in its own dtype (float64 images and a float64 classifier work with a float32
            explainer).

        Raises:
            TypeError: Inputs that are not a tensor (see
                [`ctc_plugin.inputs.check_inputs`][ctc_plugin.inputs.check_inputs]).
            ValueError: Inputs that are not a finite float image batch of the explainer's
                channels and size, a classifier output that is no ``(N, classes)`` tensor or
                of another class count, an exported classifier (``torch.export``) whose input
                shapes do not take the images (export it with a dynamic batch dimension),
                scores that are NaN or infinite with ``target=None``, or a target that is not
                integer class indices in range (negative ones count from the end, as in
                Captum), or a classifier without values yet (a lazy module that never ran, the
                meta device).
            TrainingModeError: The classifier has BatchNorm or dropout in training mode; nothing
                has run (call ``classifier.eval()``).
            DtypeMismatchError: The classifier fails on the inputs' float dtype (float64 images,
                a float32 classifier): both dtypes and the conversion that fixes it.
        """
        as_tuple = isinstance(inputs, tuple)
        if as_tuple and len(inputs) > 1:
            raise ValueError(f"ExplainerAttribution takes one input tensor, got {len(inputs)}")
        (images,) = check_inputs(inputs, images=True, channels=self.explainer.in_channels)
        check_model_has_values(self.classifier)
        check_eval_mode(self.classifier)
        self._check_fits(images)
        n, num_classes = len(images), self.explainer.num_classes
        if target is not None:  # its form is checked before anything runs
            class_indices(target, n, device=images.device)
        with eval_mode(self.explainer), training_modules_refused(), torch.no_grad():
            # the explainer is switched (and held exclusively) only when needed; a classifier
            # behind a function is refused in training mode before its first module runs
            checked = (images.dtype, images.device)
            if target is None:
                indices = self._predicted(images, additional_forward_args)
            else:
                if additional_forward_args is not None or self._checked_inputs != checked:
                    # one example, and its rows of side inputs: a call gives the classifier
                    # the same arguments whether or not an earlier call ran
                    self._classify(
                        images[:1], example_rows(additional_forward_args, n, slice(0, 1))
                    )
                # the range after the class counts: a foreign explainer is named as such
                indices = class_indices(target, n, num_classes, device=images.device)
            if additional_forward_args is None:
                self._checked_inputs = checked
            self._warn_if_other_classifier()  # once the classifier fits the explainer
            fast = images.to(self._explainer_dtype(images)).contiguous(
                memory_format=self.explainer.input_memory_format
            )
            masks = self.explainer.target_logits(fast, indices).sigmoid()
        result = masks.expand_as(images).to(images.dtype).contiguous()
        return (result,) if as_tuple else result
