"""CTC as a Captum attribution: ``CTC(model).attribute(x, target, feature_mask=...)``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, NoReturn, overload

import torch
from captum.attr import Attribution
from captum.log import log_usage
from tqdm.auto import tqdm

from ctc_plugin.concurrency import holds_model
from ctc_plugin.ctc.errors import GraphCutError, UntracedOutputError
from ctc_plugin.ctc.extra_arguments import (
    other_rows_noted,
    repeat_extra,
    repeated_extras_noted,
)
from ctc_plugin.ctc.feature_scores import FeatureScores
from ctc_plugin.ctc.interception import CTCMode, own_backward
from ctc_plugin.ctc.layout import CopyLayout
from ctc_plugin.ctc.masks import (
    FeatureSet,
    broadcast_to_inputs,
    masked_copies,
    prepare_features,
    spread_scores,
)
from ctc_plugin.ctc.pass_output import check_finite_scores, check_pass_output
from ctc_plugin.ctc.rules import GatedPass
from ctc_plugin.ctc.sharing import DEFAULT_BIAS_SHARING, BiasSharing, BiasSharingMode, check_mode
from ctc_plugin.ctc.speedups import DEFAULT, Speedups
from ctc_plugin.inputs import (
    check_eval_mode,
    check_float_model,
    check_inputs,
    check_model_has_values,
    check_not_exported,
    check_takes_images,
    dtype_mismatch_explained,
    example_rows,
    forward_dtype,
    is_integer,
    outside_inference_mode,
)
from ctc_plugin.module_paths import unwrapped
from ctc_plugin.targets import (
    TargetType,
    example_targets,
    resolve_targets,
    select_targets,
    slice_targets,
)
from ctc_plugin.wording import NOISE_TUNNEL_MODULE, called_from, counted

#: One input tensor, or a tuple of them (Captum's ``TensorOrTupleOfTensorsGeneric``).
TensorOrTuple = torch.Tensor | tuple[torch.Tensor, ...]

#: What the passes give: (N, K) scores, the baseline's (N,) share or ``None``, the (N,) target
#: outputs, their (N,) flat indices and the shape of one example's output.
_PassResult = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, tuple[int, ...]]


class CTC(Attribution):
    r"""Contribution To Classification of complex features (Kalanovska et al., CVPRW 2025).

    Each feature (an image region: a SAM segment, a superpixel, a grid cell, any integer
    feature mask) is scored by a *scaled partial forward pass*: the input restricted to the
    feature is propagated through the model with the gates of the original pass fixed
    (ReLU patterns, max-pooling switches, normalisation statistics, squeeze-excitation
    scales: see [the table][ctc_plugin.ctc.operation_table]), and every bias is shared
    among the features. The feature's score is the target output of its copy.

    The gates come from the unmasked input travelling in the same batch as the masked copies,
    so a call costs K + 1 forward-equivalents for K features, like Captum's
    ``FeatureAblation`` (K + 2 in ``"reference"`` mode, which also propagates the whole input
    with the published sharing to rescale the scores).

    Args:
        forward_func: The model, or any function of the inputs returning (N, classes) outputs. Every
            torch operation it calls is intercepted; one without a CTC rule raises
            [`UnsupportedOperationError`][ctc_plugin.UnsupportedOperationError] naming it. CTC calls
            it on a batch of feature copies and reads each copy's output, so it must compute its
            output from its arguments with torch operations (lambdas, ``functools.partial``,
            wrappers that slice the logits are fine); an output that was not, because it went
            through numpy or Python numbers, ignores the argument, or comes from a tensor captured
            from outside, raises `UntracedOutputError`.
        segmenter: Makes the feature mask when ``attribute`` gets none: a callable taking (N, 3, H,
            W) images and returning an (N, 1, H, W) integer mask. Defaults to
            [`ctc_plugin.features.SuperpixelSegmenter`][ctc_plugin.features.SuperpixelSegmenter]
            (offline, scikit-image).
        bias_sharing: ``"proportional"`` (the default: shares ``|z_k| / sum_j |z_j|``; scores
            over a partition add up to the target output; every copy travels in one pass),
            ``"reference"`` (the published formula with its quantisation and spread capping,
            scores rescaled so the reference full copy (with a baseline: ``x - baseline``, and
            the baseline's copy with it) gives the target output; the mode to
            reproduce the paper's numbers, and to bound memory with ``perturbations_per_eval``),
            or ``"none"`` (no bias: scores are gradient x input of the network linearised at its
            gates, summed per feature). The documentation's "Choose a method" page compares
            them.

    Threads: one instance and one model may serve several threads at once; each call gives
    exactly what it gives alone. A call only reads the model (the interception is per thread),
    so calls run concurrently; they wait while a call that changes the model (a
    [`CTCAttributor`][ctc_plugin.CTCAttributor] pass) runs on it. See
    [`ctc_plugin.concurrency`][ctc_plugin.concurrency] and the documentation's "Threads" page.

    Raises:
        TypeError: A ``segmenter`` that is not callable: a sharing mode or a feature mask given
            by position (``CTC(model, "reference")``) is refused, saying where it goes.
        ValueError: An unknown ``bias_sharing``.

    Examples:
        >>> ctc = CTC(model, bias_sharing="proportional")
        >>> attributions = ctc.attribute(images, 3, feature_mask=segments)

        Pixel detail inside the features, from any relevance method, comes after the call
        ([`distribute_within_features`][ctc_plugin.distribute_within_features]):

        >>> attributions, scores = ctc.attribute(
        ...     images, 3, feature_mask=segments, return_feature_scores=True)
        >>> pixels = distribute_within_features(images, scores, EpsilonPlusFlat(), model=model)
    """

    def __init__(
        self,
        forward_func: Callable[..., torch.Tensor],
        segmenter: Callable[[torch.Tensor], torch.Tensor] | None = None,
        bias_sharing: BiasSharingMode = DEFAULT_BIAS_SHARING,
    ) -> None:
        super().__init__(unwrapped(forward_func))  # the model inside torch's wrappers
        check_segmenter(segmenter)
        check_mode(bias_sharing)
        self.bias_sharing = bias_sharing
        self.segmenter = segmenter
        #: The speed-ups of the pass (private: tests and benchmarks choose the spec or some of
        #: them, see ctc_plugin.ctc.speedups); none changes a result beyond float rounding.
        self._speedups: Speedups = DEFAULT
        self._sharings: dict[Speedups, BiasSharing] = {}

    @classmethod
    def get_name(cls) -> str:
        """The method's name in Captum's summaries and plots (its default spells "C T C")."""
        return "CTC"

    def __getstate__(self) -> dict[str, Any]:
        """The state to copy or pickle, without the bias sharings' scratch buffers.

        They hold per-thread workspaces (which no pickle takes) and are made again at the
        copy's first call, so a used ``CTC`` copies and pickles as a new one does.
        """
        state = dict(self.__dict__)
        state["_sharings"] = {}
        return state

    def _sharing(self) -> BiasSharing:
        """The bias sharing of the mode under the speed-ups (kept: it holds scratch buffers)."""
        sharing = self._sharings.get(self._speedups)
        if sharing is None:
            sharing = self._sharings[self._speedups] = self._speedups.sharing(self.bias_sharing)
        return sharing

    @property
    def multiplies_by_inputs(self) -> bool:
        """Scores are contributions of the input's values, not sensitivities."""
        return True

    def has_convergence_delta(self) -> bool:
        """CTC reports a convergence delta: how far the scores are from adding up to the output.

        See [`FeatureScores.convergence_delta`][ctc_plugin.FeatureScores.convergence_delta];
        ``attribute(..., return_convergence_delta=True)`` returns it last, as Captum's methods
        do, and Captum's ``NoiseTunnel`` then returns one per noisy sample.
        """
        return True

    def compute_convergence_delta(self, attributions: Any, *args: Any, **kwargs: Any) -> NoReturn:
        """Refused: CTC computes its convergence delta during the call, from the scores.

        Captum's gradient methods recompute the delta from the attributions and the two end
        points; CTC's maps repeat each feature's score on every pixel of the feature, so their
        sum is not the scores' sum. ``attribute(..., return_convergence_delta=True)`` returns
        the delta, as does
        [`FeatureScores.convergence_delta`][ctc_plugin.FeatureScores.convergence_delta].

        Raises:
            NotImplementedError: Always, saying so.
        """
        raise NotImplementedError(
            "CTC computes its convergence delta during the call, from the feature scores: pass "
            "return_convergence_delta=True to attribute (or read FeatureScores."
            "convergence_delta); it cannot be recomputed from the attribution maps, which "
            "repeat each feature's score on every pixel of the feature"
        )

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        *,
        feature_mask: TensorOrTuple | list | None = None,
        baselines: float | TensorOrTuple | None = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int | None = None,
        show_progress: bool = False,
        return_feature_scores: Literal[False] = False,
        return_convergence_delta: Literal[False] = False,
    ) -> TensorOrTuple: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        *,
        feature_mask: TensorOrTuple | list | None = None,
        baselines: float | TensorOrTuple | None = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int | None = None,
        show_progress: bool = False,
        return_feature_scores: Literal[True],
        return_convergence_delta: Literal[False] = False,
    ) -> tuple[TensorOrTuple, FeatureScores]: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        *,
        feature_mask: TensorOrTuple | list | None = None,
        baselines: float | TensorOrTuple | None = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int | None = None,
        show_progress: bool = False,
        return_feature_scores: Literal[False] = False,
        return_convergence_delta: Literal[True],
    ) -> tuple[TensorOrTuple, torch.Tensor]: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        *,
        feature_mask: TensorOrTuple | list | None = None,
        baselines: float | TensorOrTuple | None = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int | None = None,
        show_progress: bool = False,
        return_feature_scores: Literal[True],
        return_convergence_delta: Literal[True],
    ) -> tuple[TensorOrTuple, FeatureScores, torch.Tensor]: ...

    @log_usage()
    @holds_model()
    @outside_inference_mode
    @dtype_mismatch_explained
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        *,
        feature_mask: TensorOrTuple | list | None = None,
        baselines: float | TensorOrTuple | None = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int | None = None,
        show_progress: bool = False,
        return_feature_scores: bool = False,
        return_convergence_delta: bool = False,
    ) -> (
        TensorOrTuple
        | tuple[TensorOrTuple, FeatureScores]
        | tuple[TensorOrTuple, torch.Tensor]
        | tuple[TensorOrTuple, FeatureScores, torch.Tensor]
    ):
        """Score every feature and return attributions shaped like ``inputs``.

        ``inputs`` and ``target`` may be given by position (``ctc.attribute(x, target)``); every
        other argument by keyword only, so that a call reads the same in any Captum code
        (Captum's own methods order their arguments differently: ``FeatureAblation`` takes
        ``baselines`` second).

        Args:
            inputs: A finite floating-point tensor (N, ...) or a tuple of them sharing
                dimension 0 (N >= 1); image batches (N, C, H, W) when no ``feature_mask`` is
                given.
            target: Any Captum target form (integer class indices; negative ones count from
                the end); ``None`` means the predicted class.
            feature_mask: Integer feature ids per input, broadcastable to it: (1, 1, H, W) for
                the whole batch or (N, 1, H, W) per example; ids need not be contiguous. A list
                of disjoint boolean (H, W) masks is accepted too. ``None``: the segmenter makes
                one from ``inputs`` (grayscale images, (N, 1, H, W), as the RGB images of
                their channel repeated).
            baselines: Scalar or tensor(s) broadcastable to the inputs (default 0). Scores are
                contributions of ``x - baseline``; the baseline's own share is reported in
                [`FeatureScores`][ctc_plugin.FeatureScores] so that completeness still holds.
            additional_forward_args: Extra arguments appended to ``forward_func``'s inputs;
                tensors whose first dimension is N are repeated for every copy.
            perturbations_per_eval: How many feature copies travel in one forward batch
                (bounds memory). ``None`` (default) propagates all features at once. It
                changes memory and speed only: the scores equal the one-pass scores up to
                the model's float rounding, which in ``"reference"`` mode can cross a step of
                the published formula's quantisation in float32 (the docs' "How CTC works",
                Precision; in float64, a few ulps). ``"proportional"`` sharing needs every
                feature in one pass.
            show_progress: Show a tqdm progress bar over the forward batches.
            return_feature_scores: Also return the [`FeatureScores`][ctc_plugin.FeatureScores].
            return_convergence_delta: Also return, last, the (N,) convergence delta
                ([`FeatureScores.convergence_delta`][ctc_plugin.FeatureScores.convergence_delta]:
                the scores' sum, with the baseline's share, minus the target output).

        Returns:
            Attributions shaped like ``inputs`` (each element carries its feature's score, as with
            Captum's ``FeatureAblation``), then the [`FeatureScores`][ctc_plugin.FeatureScores]
            and the convergence delta, each on request. To split each score over its
            feature's elements by a relevance map (pixel detail), hand those scores to
            [`distribute_within_features`][ctc_plugin.distribute_within_features].

        Raises:
            TypeError: inputs that are not tensors (see
                [`ctc_plugin.inputs.check_inputs`][ctc_plugin.inputs.check_inputs]), or
                baselines that are neither numbers nor tensors (text, complex values).
            ValueError: inputs, masks, targets or options that do not fit, with what to fix.
            TrainingModeError: the model has BatchNorm or dropout in training mode; nothing
                has run (call ``model.eval()``).
            TypeError: ``return_feature_scores=True`` given through Captum's ``NoiseTunnel``,
                which averages tensors only (the averaged map holds each feature's score).
            UnsupportedOperationError: the model calls an operation without a CTC rule.
            UntracedOutputError: forward_func's output was not computed from the copies it was
                given by torch operations (a numpy round trip, an ignored argument, ...).
            DtypeMismatchError: the model failed on inputs of another floating-point dtype than
                its own (a ``RuntimeError``, naming both and the conversion).
            FloatingPointError: a score came out NaN or infinite where the model's output is
                finite (a float16 pass out of its range).
        """
        if return_feature_scores:
            _check_not_in_noise_tunnel()
        is_tuple = isinstance(inputs, tuple)
        inputs_tuple = check_inputs(inputs)
        check_not_exported(self.forward_func, "CTC")  # TorchScript: UntracedOutputError
        check_model_has_values(self.forward_func)
        check_float_model(self.forward_func, "CTC")  # a quantized BatchNorm is no training one
        check_eval_mode(self.forward_func)
        check_takes_images(self.forward_func)
        example_targets(target, inputs_tuple[0].shape[0])  # the form; the range after the pass
        extra = _as_tuple(additional_forward_args)
        if feature_mask is None:
            feature_mask = self._segment(inputs_tuple)
        features = prepare_features(inputs_tuple, feature_mask)
        baselines_tuple = _check_baselines(baselines, inputs_tuple)
        chunk = self._chunk_size(perturbations_per_eval, features.count)

        fast = None
        with other_rows_noted(extra, inputs_tuple[0].shape[0]):
            if (
                self.bias_sharing == "none"
                and self._speedups.gradient_shortcut
                and not _gradient_rounded(self.forward_func, inputs_tuple)  # else: copies
            ):
                fast = self._run_gradient_with_progress(
                    inputs_tuple, baselines_tuple, features, extra, target, show_progress
                )
            if fast is None:
                fast = self._run(
                    inputs_tuple, baselines_tuple, features, extra, target, chunk, show_progress
                )
        scores, baseline_share, output, target_index, output_shape = fast
        scores = scores.masked_fill(~features.presence, 0.0)
        check_finite_scores(scores, output)
        attributions = tuple(
            spread_scores(scores, features, i, x) for i, x in enumerate(inputs_tuple)
        )
        result: TensorOrTuple = attributions if is_tuple else attributions[0]
        if not (return_feature_scores or return_convergence_delta):
            return result
        feature_scores = FeatureScores(
            scores=scores,
            ids=features.ids,
            present=features.presence,
            baseline=baseline_share,
            output=output,
            target=target_index,
            feature_mask=features.masks,
            output_shape=output_shape,
        )
        returned = (feature_scores,) if return_feature_scores else ()
        if return_convergence_delta:
            returned += (feature_scores.convergence_delta,)
        return (result, *returned)

    # ------------------------------------------------------------------ internals
    def _segment(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if len(inputs) != 1:
            raise ValueError(
                f"without a feature_mask, CTC segments the input with its segmenter, which needs "
                f"one image batch (N, C, H, W), not a tuple of {len(inputs)} inputs; pass "
                "feature_mask for them"
            )
        not_images = "pass feature_mask for inputs that are not images"
        if inputs[0].dim() == 2:  # rows of features more often than one grayscale image
            not_images = (
                "if they are rows of features (N, F), pass feature_mask instead, e.g. one "
                "feature per column: feature_mask=torch.arange(x.shape[1]).unsqueeze(0)"
            )
        check_inputs(
            inputs[0],
            images=True,
            finite=False,  # checked already
            context=(
                f" (without a feature_mask, CTC segments the images with its segmenter; "
                f"{not_images})"
            ),
        )
        segmenter = self.segmenter
        from ctc_plugin.features import SuperpixelSegmenter, ValueRangeError

        if segmenter is None:
            segmenter = self.segmenter = SuperpixelSegmenter()
            self._made_segmenter = segmenter
        made = segmenter is getattr(self, "_made_segmenter", None)
        images = inputs[0]
        channels = images.shape[1]
        if channels == 1:  # grayscale: segmenters take RGB, the model its one channel
            images = images.expand(-1, 3, -1, -1)
        try:
            mask = segmenter(images)
        except ValueRangeError as error:
            made_here = ""
            if made:
                advice = (
                    "clamp the images as said, or pass a feature_mask"
                    if error.overshoot
                    else "for normalised images give CTC(model, segmenter=ctc_plugin.features."
                    "SuperpixelSegmenter(mean=..., std=...)) with the normalisation's mean and "
                    "std (value_range=(0, 255) for 8-bit values), or pass a feature_mask"
                )
                made_here = (
                    ". CTC made that segmenter itself (neither segmenter= nor feature_mask= was "
                    f"given): {advice}"
                )
            wrapped = ValueRangeError(
                f"{error}{made_here}. If a wrapper perturbed the images (NoiseTunnel, "
                "sensitivity_max, infidelity), segment the clean images once and pass "
                "feature_mask=: the features then stay the same for every perturbed copy"
            )
            wrapped.overshoot = error.overshoot
            raise wrapped from error
        except ValueError as error:
            channels_last = images.shape[-1] in (1, 3, 4) and channels not in (1, 3, 4)
            if channels in (1, 3) or channels_last:  # the segmenter's own hint fits
                raise
            # its hint (drop the alpha channel) would make the model fail: segment a view
            raise ValueError(
                f"without a feature_mask, CTC segments the images with its segmenter, which "
                f"takes RGB (or grayscale) images, and these have {channels} channels: "
                "segment an RGB view of them and pass feature_mask=, e.g. "
                "feature_mask=SuperpixelSegmenter()(x[:, :3]) for RGBA images "
                "(ctc_plugin.features)"
            ) from error
        _check_one_map_per_image(mask, inputs[0], segmenter)
        try:
            prepare_features(inputs, mask)
        except ValueError as error:  # its words say feature_mask, which the user did not give
            raise ValueError(
                f"the segmenter ({type(segmenter).__name__}) returned a mask CTC cannot use, "
                f"read as the feature_mask: {error}. A segmenter returns (N, 1, H, W) integer "
                "feature ids (ctc_plugin.features.SegmenterProtocol)"
            ) from error
        return mask

    def _chunk_size(self, perturbations_per_eval: int | None, count: int) -> int:
        if perturbations_per_eval is None:
            return count
        if not is_integer(perturbations_per_eval):  # NumPy integers count, bools do not
            raise ValueError(
                "perturbations_per_eval must be a positive int or None, got "
                f"{perturbations_per_eval!r} ({type(perturbations_per_eval).__name__})"
            )
        perturbations_per_eval = int(perturbations_per_eval)
        if perturbations_per_eval < 1:
            raise ValueError(f"perturbations_per_eval must be >= 1; got {perturbations_per_eval}")
        if self.bias_sharing == "proportional" and perturbations_per_eval < count:
            raise ValueError(
                f"bias_sharing='proportional' divides each bias among all {count} features, so "
                f"they must travel in one pass; perturbations_per_eval={perturbations_per_eval} "
                "is too small. Use perturbations_per_eval=None, or 'reference'/'none' sharing "
                "to bound memory"
            )
        return min(perturbations_per_eval, count)

    def _run(
        self,
        inputs: tuple[torch.Tensor, ...],
        baselines: tuple[torch.Tensor, ...] | None,
        features: FeatureSet,
        extra: tuple,
        target: TargetType,
        chunk: int,
        show_progress: bool,
    ) -> _PassResult:
        """The CTC passes, examples in groups (``Speedups.copies_per_pass``), features in chunks."""
        n = inputs[0].shape[0]
        copies = chunk + 1 + int(self.bias_sharing == "reference") + int(baselines is not None)
        group = self._speedups.examples_per_pass(copies, inputs[0].device) or n
        groups = [slice(start, min(start + group, n)) for start in range(0, n, group)]
        chunks = [slice(s, min(s + chunk, features.count)) for s in range(0, features.count, chunk)]
        progress = self._progress_bar(len(groups) * len(chunks)) if show_progress else None
        try:
            results = [
                self._run_examples(
                    tuple(example_rows(x, n, part) for x in inputs),
                    None
                    if baselines is None
                    else tuple(example_rows(b, n, part) for b in baselines),
                    _feature_rows(features, inputs, part),
                    tuple(example_rows(a, n, part) for a in extra),
                    slice_targets(target, n, part),
                    chunks,
                    progress,
                    first_example=part.start,
                )
                for part in groups
            ]
        finally:
            if progress is not None:
                progress.close()
        scores, baseline_scores, outputs, indices, shapes = zip(*results)
        baseline_score = None if baselines is None else torch.cat(baseline_scores)
        return torch.cat(scores), baseline_score, torch.cat(outputs), torch.cat(indices), shapes[0]

    def _run_examples(
        self,
        inputs: tuple[torch.Tensor, ...],
        baselines: tuple[torch.Tensor, ...] | None,
        features: FeatureSet,
        extra: tuple,
        target: TargetType,
        chunks: list[slice],
        progress: tqdm | None,
        first_example: int = 0,
    ) -> _PassResult:
        """The CTC passes of one group of examples (from ``first_example`` on), one per chunk."""
        n = inputs[0].shape[0]
        reference = self.bias_sharing == "reference"
        columns = []
        baseline_score = full_score = output = indices = None
        for part in chunks:
            with_baseline = baselines is not None and part.start == 0
            layout = CopyLayout(
                examples=n,
                features=part.stop - part.start,
                reference_full=reference,
                baseline=with_baseline,
                presence=_sharing_presence(features.presence[:, part], reference, with_baseline),
            )
            copies = functools.partial(
                _tagged_copies,
                inputs=inputs,
                baselines=baselines,
                masks=features.masks,
                ids=features.ids[part],
                reference=reference,
                baseline_copy=with_baseline,  # it travels with the first batch only
            )
            logits = self._copies_pass(layout, copies, extra)
            grouped = layout.group(logits)
            if indices is None:
                output_full = grouped[:, 0]
                indices = resolve_targets(target, output_full, first_example)
                output = select_targets(output_full, indices)
            per_copy = _select_per_copy(grouped, indices)
            first = layout.first_feature
            columns.append(per_copy[:, first : first + layout.features])
            if reference and full_score is None:
                full_score = per_copy[:, 1]
            if with_baseline:
                baseline_score = per_copy[:, -1]
            if progress is not None:
                progress.update()
        scores = torch.cat(columns, dim=1)
        if reference:
            # the reference full copy is x - baseline: with the baseline's copy it stands for
            # the whole input, which the rescaling takes to the target output
            whole = full_score if baseline_score is None else full_score + baseline_score
            scale = _safe_ratio(output, whole)
            scores = scores * scale.unsqueeze(1)
            if baseline_score is not None:
                baseline_score = baseline_score * scale
        return scores, baseline_score, output, indices, tuple(output_full.shape[1:])

    def _progress_bar(self, total: int) -> tqdm:
        """A tqdm bar over ``total`` forward batches, named after the sharing mode."""
        return tqdm(total=total, desc=f"CTC ({self.bias_sharing})", unit="batch")

    def _run_gradient_with_progress(
        self,
        inputs: tuple[torch.Tensor, ...],
        baselines: tuple[torch.Tensor, ...] | None,
        features: FeatureSet,
        extra: tuple,
        target: TargetType,
        show_progress: bool,
    ) -> _PassResult | None:
        """`_run_gradient`, counted as one batch on a progress bar when one is asked for."""
        progress = self._progress_bar(1) if show_progress else None
        try:
            result = self._run_gradient(inputs, baselines, features, extra, target)
            if result is not None and progress is not None:
                progress.update()
            return result
        finally:
            if progress is not None:
                progress.close()

    def _run_gradient(
        self,
        inputs: tuple[torch.Tensor, ...],
        baselines: tuple[torch.Tensor, ...] | None,
        features: FeatureSet,
        extra: tuple,
        target: TargetType,
    ) -> _PassResult | None:
        """``"none"`` sharing in one forward and one backward pass (the fast path).

        Without biases the CTC pass is the network linearised at its gates (ReLU patterns,
        pooling switches, rescale ratios, normalisation statistics, gate tensors), so a
        feature's score is the linearised network's gradient x input summed over it. The
        forward runs under the same rules as the full pass, which hold every gate fixed, so
        its gradient is the linearised network's and unsupported operations are still
        refused by name.

        Returns ``None`` when the gradient cannot follow the forward function (it detaches the
        copies, runs under ``torch.no_grad()`` or takes their values out of torch: see
        `GraphCutError`; or it writes in place into a tensor autograd needs, ``x += y`` after
        ``x`` fed a layer), or is not finite (``torch.where(d > 0, y / d, 0)``: autograd
        multiplies the zero gradient of the branch left out by ``1 / 0``), or meets weights
        made under ``torch.inference_mode()`` (inference tensors, which autograd cannot save
        for the backward pass: serving code's models); the caller then runs
        the forward pass of the copies, which gives the same scores or refuses what it cannot
        follow. A forward function that sets a gradient of its own (a custom
        ``autograd.Function``, ``Tensor.register_hook``) is sent there too: its gradient is not
        the linearised network's, and its hooks would run.
        """
        n = inputs[0].shape[0]
        layout = CopyLayout(examples=n, features=0, reference_full=False, baseline=False)
        gated = self._speedups.gated_pass(layout, self._sharing(), gradient=True)
        leaves = tuple(x.detach().requires_grad_(True) for x in inputs)
        gated.gradient_inputs = leaves
        with torch.enable_grad():
            try:
                with CTCMode(gated, self.forward_func):
                    # copies, not views: a model may change its input in place
                    logits = self.forward_func(
                        *(gated.tag(leaf.clone()) for leaf in leaves), *extra
                    )
            except GraphCutError:
                return None  # the forward pass of the copies gives the same scores
            except RuntimeError as error:
                if not _is_inference_tensor_error(error):
                    raise
                return None  # weights made under torch.inference_mode(): no graph through them
            logits = check_pass_output(gated, logits, self.forward_func)
            if own_backward(None, [logits]) is not None:
                return None  # a custom autograd.Function made the output
            indices = resolve_targets(target, logits.detach())
            selected = select_targets(logits, indices)
            try:
                gradients = torch.autograd.grad(selected.sum(), leaves, allow_unused=True)
            except RuntimeError as error:  # autograd cannot go back through the forward
                in_place = "modified by an inplace operation" in str(error)
                if not in_place and not _is_inference_tensor_error(error):
                    raise
                return None  # (x += y after x fed a layer): the pass of copies needs no gradient
        if any(g is not None and not bool(torch.isfinite(g).all()) for g in gradients):
            # a branch torch.where left out divided by zero: its zero gradient times 1/0 is
            # NaN in autograd, where the pass of copies gives that branch nothing
            return None
        # in the output's dtype, as the pass of the copies gives them (inputs may differ); no
        # graph (an input that requires grad), as the pass of the copies gives them too
        scores = selected.new_zeros(n, features.count)
        baseline_share = None if baselines is None else selected.new_zeros(n)
        with torch.no_grad():
            for i, (x, gradient) in enumerate(zip(inputs, gradients)):
                if gradient is None:
                    continue
                difference = x if baselines is None else x - baselines[i]
                contribution = (gradient * difference).reshape(n, -1).to(scores.dtype)
                mask = features.masks[i].expand(x.shape).reshape(n, -1).contiguous()
                scores.scatter_add_(1, torch.searchsorted(features.ids, mask), contribution)
                if baseline_share is not None:
                    share = (gradient * baselines[i]).reshape(n, -1).sum(1)
                    baseline_share += share.to(scores.dtype)
        return scores, baseline_share, selected.detach(), indices, tuple(logits.shape[1:])

    def _copies_pass(
        self, layout: CopyLayout, copies: Callable[[GatedPass], tuple], extra: tuple
    ) -> torch.Tensor:
        """One CTC pass over the batch ``copies`` builds; return the model's outputs.

        Raises:
            RuntimeError: torch's, from the forward function, with a note on the extra
                arguments it was given repeated per copy where there were such (a tensor
                with one row per example by chance, such as class weights when there are as
                many examples as classes, fails in the model this way).
            UntracedOutputError: A tensor differs between the copies of one example; with
                the same note where the extra arguments hold a tensor with one row per example
                (an attention mask shared by as many images as it has rows).
        """
        gated = self._speedups.gated_pass(layout, self._sharing())
        try:
            batch = copies(gated)
            repeated = repeat_extra(extra, layout.examples, layout.copies)
            try:
                return self._forward(gated, batch, repeated)
            except (RuntimeError, UntracedOutputError) as error:
                noted = repeated_extras_noted(error, extra, layout)
                if noted is None:
                    raise
                raise noted from error
        finally:
            gated.close()

    def _forward(self, gated: GatedPass, batch: tuple, extra: tuple) -> torch.Tensor:
        with torch.no_grad():
            with CTCMode(gated, self.forward_func):
                logits = self.forward_func(*batch, *extra)
            return check_pass_output(gated, logits, self.forward_func)


# ---------------------------------------------------------------------------- helpers


def check_segmenter(segmenter: Any) -> None:
    """Raise a `TypeError` saying what goes where when ``segmenter`` is not callable.

    CTC's second argument is the segmenter: a sharing mode or a feature mask given by position
    lands there, where it would otherwise be taken for one (and a mask never used).
    """
    if segmenter is None or callable(segmenter):
        return
    given = type(segmenter).__name__
    if isinstance(segmenter, str):
        hint = f"to choose the bias sharing, name it: CTC(model, bias_sharing={segmenter!r})"
    elif isinstance(segmenter, (torch.Tensor, tuple, list)) or hasattr(segmenter, "__array__"):
        hint = "give a feature mask to the call: ctc.attribute(x, target, feature_mask=mask)"
    else:
        hint = "pass a function of (N, 3, H, W) images returning (N, 1, H, W) integer masks"
    raise TypeError(
        f"CTC's second argument is the segmenter, a callable that makes feature masks; got a "
        f"{given}: {hint}"
    )


def _check_one_map_per_image(mask: Any, images: torch.Tensor, segmenter: Any) -> None:
    """Refuse a segmenter's mask that is not ``(N, 1, H, W)`` (or ``(1, 1, H, W)``, shared).

    As a ``feature_mask``, an ``(N, H, W)`` mask of as many images as channels would be read
    per channel (Captum's broadcasting), each image's map becoming one channel's features of
    every image; a segmenter's masks are per image, never per channel.

    Raises:
        ValueError: A tensor of another rank or with more than one channel, naming the
            segmenter, the shape it returned and the form expected.
    """
    if not isinstance(mask, torch.Tensor) or (mask.dim() == 4 and mask.shape[1] == 1):
        return  # prepare_features names what else is wrong
    count = images.shape[0]
    fix = (
        "return mask.unsqueeze(1)"
        if mask.dim() == 3 and mask.shape[0] == count
        else "a map shared by every image is (1, 1, H, W)"
    )
    raise ValueError(
        f"the segmenter ({type(segmenter).__name__}) returned a mask of shape "
        f"{tuple(mask.shape)} for {counted(count, 'image')} {tuple(images.shape)}: a segmenter "
        f"returns one map per image, (N, 1, H, W) integer feature ids "
        f"(ctc_plugin.features.SegmenterProtocol), never per channel; {fix}"
    )


def _tagged_copies(
    gated: GatedPass,
    inputs: tuple[torch.Tensor, ...],
    baselines: tuple[torch.Tensor, ...] | None,
    masks: tuple[torch.Tensor, ...],
    ids: torch.Tensor,
    reference: bool,
    baseline_copy: bool,
) -> tuple[torch.Tensor, ...]:
    """The batch of copies of every input for one pass, tagged as that pass's."""
    return tuple(
        gated.tag(
            masked_copies(
                x,
                None if baselines is None else baselines[i],
                masks[i],
                ids,
                reference,
                baseline_copy=baseline_copy,
            )
        )
        for i, x in enumerate(inputs)
    )


def _as_tuple(value: Any) -> tuple:
    if value is None:
        return ()
    return value if isinstance(value, tuple) else (value,)


def _is_inference_tensor_error(error: RuntimeError) -> bool:
    """Whether ``error`` is autograd refusing an inference tensor (made under inference mode)."""
    return "Inference tensors cannot be saved for backward" in str(error)


def _check_baselines(
    baselines: float | TensorOrTuple | None, inputs: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...] | None:
    """Baselines as tensors broadcast to the inputs, or None when they are all zero."""
    if baselines is None:
        return None
    out = broadcast_to_inputs(baselines, inputs, "baseline")
    if all(not b.any() for b in out):
        return None
    return tuple(out)


def _sharing_presence(features: torch.Tensor, reference: bool, baseline: bool) -> torch.Tensor:
    """(N, S) presence of the sharing copies: reference full copy, features, baseline copy."""
    n = features.shape[0]
    ones = [
        torch.ones(n, int(flag), dtype=torch.bool, device=features.device)
        for flag in (reference, baseline)
    ]
    return torch.cat([ones[0], features, ones[1]], dim=1)


def _feature_rows(
    features: FeatureSet, inputs: tuple[torch.Tensor, ...], part: slice
) -> FeatureSet:
    """The features of examples ``part``: the same ids, their masks and presence.

    Only a mask with as many dimensions as its input has a batch dimension; one with fewer
    (an (H, W) mask, a per-channel (C, H, W) mask) broadcasts from the right and is shared by
    every example, whatever the size of its first dimension.
    """
    n = inputs[0].shape[0]
    return FeatureSet(
        masks=tuple(
            example_rows(mask, n, part) if mask.dim() == x.dim() else mask
            for mask, x in zip(features.masks, inputs)
        ),
        ids=features.ids,
        presence=features.presence[part],
    )


def _gradient_rounded(forward_func: Any, inputs: tuple[torch.Tensor, ...]) -> bool:
    """Whether the gradient of ``inputs`` is in a narrower format than the model computes in.

    The gradient of a float16 or bfloat16 input is rounded to that format, while a float32 model
    (behind a float32 normalisation, which promotes its input) computes in float32; a model of
    the inputs' own format loses nothing. A model whose dtype cannot be told counts as wider.
    """
    narrow = [x.dtype for x in inputs if x.dtype in (torch.float16, torch.bfloat16)]
    if not narrow:
        return False
    wanted = forward_dtype(forward_func)
    return wanted is None or any(torch.finfo(wanted).bits > torch.finfo(d).bits for d in narrow)


def _select_per_copy(grouped: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(N, C, *out) outputs -> (N, C) target values."""
    if grouped.dim() == 2:
        return grouped
    flat = grouped.flatten(2)
    return flat.gather(2, indices.view(-1, 1, 1).expand(-1, flat.shape[1], 1)).squeeze(2)


def _safe_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, 1 where the denominator is 0 (nothing to rescale)."""
    zero = denominator == 0
    return torch.where(
        zero, torch.ones_like(numerator), numerator / denominator.masked_fill(zero, 1)
    )


def _check_not_in_noise_tunnel() -> None:
    """Refuse ``return_feature_scores=True`` in a call made by Captum's ``NoiseTunnel``.

    NoiseTunnel averages what the method returns as tensors; a `FeatureScores` failed inside
    it (``'FeatureScores' object has no attribute 'shape'``).
    """
    if called_from(NOISE_TUNNEL_MODULE):
        raise TypeError(
            "return_feature_scores=True cannot pass through Captum's NoiseTunnel, which "
            "averages tensors only: call NoiseTunnel(ctc).attribute(...) without it and read "
            "each feature's averaged score off the averaged map (CTC writes a feature's "
            "score on every one of its pixels), or call ctc.attribute(noisy_images, ..., "
            "return_feature_scores=True) on noisy copies you make and average their scores"
        )
