"""`FeatureScores`: CTC's per-feature scores, returned beside the attributions on request."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctc_plugin.targets import captum_targets


@dataclass(frozen=True)
class FeatureScores:
    """Per-feature CTC scores, returned beside the attributions on request.

    Attributes:
        scores: (N, K) score of each feature for each example (0 where a feature is absent).
        ids: (K,) the feature ids, sorted, in the order of ``scores``' columns.
        present: (N, K) whether each example has each feature.
        baseline: (N,) the baseline's own share, or ``None`` when the baseline is zero.
        output: (N,) the model's target output on the unmasked input (the target logit).
        target: (N,) flat index of each example's target in the model's output (the class index
            for (N, classes) outputs).
        feature_mask: The integer feature mask of each input, as the call used it (made by the
            segmenter when the call gave none), broadcastable to that input: one tensor per
            input. [`distribute_within_features`][ctc_plugin.distribute_within_features] reads
            it.
        output_shape: The shape of one example's model output (``(classes,)`` for a
            classifier, ``()`` for one value per example), which ``target``'s flat indices
            point into; ``None`` where it is not known.
    """

    scores: torch.Tensor
    ids: torch.Tensor
    present: torch.Tensor
    baseline: torch.Tensor | None
    output: torch.Tensor
    target: torch.Tensor
    feature_mask: tuple[torch.Tensor, ...]
    output_shape: tuple[int, ...] | None = None

    @property
    def captum_target(self) -> torch.Tensor | list[tuple[int, ...]] | None:
        """Each example's target in Captum's form, as another Captum method takes it.

        ``target`` itself (class indices) for a classifier's ``(N, classes)`` outputs, one
        index tuple per example for outputs of more dimensions, or ``None`` for a model with
        one value per example (``(N,)`` outputs), to explain the same outputs
        with another method
        ([`distribute_within_features`][ctc_plugin.distribute_within_features] passes it).
        """
        return captum_targets(self.target, self.output_shape)

    @property
    def convergence_delta(self) -> torch.Tensor:
        """(N,) the scores' sum (with the baseline's share) minus the target output.

        Captum's sign: what the attributions add up to minus what they should add up to. Zero
        up to float rounding in ``"proportional"`` sharing on a model CTC is exact on; in
        ``"reference"`` sharing the gap its quantisation and spread capping leave; in ``"none"``
        the biases' part of the output (no bias is shared).
        """
        total = self.scores.sum(dim=1)
        if self.baseline is not None:
            total = total + self.baseline
        return total - self.output

    def ranked(self, example: int = 0) -> list[tuple[int, float]]:
        """The present features of one example as ``(id, score)``, highest score first."""
        row = self.scores[example]
        keep = self.present[example]
        pairs = zip(self.ids[keep].tolist(), row[keep].tolist())
        return sorted(pairs, key=lambda pair: pair[1], reverse=True)
