"""Where each copy of an example sits in the batch that the CTC pass propagates.

Every example of the user's batch travels as a group of consecutive copies:

- copy 0, the *gate copy*: the unmasked input, propagated with the model's real operations.
  Its activations fix the gates (ReLU patterns, max-pooling switches, normalisation
  statistics, squeeze-excitation scales) for the other copies.
- in ``"reference"`` bias sharing only, copy 1, the *reference full copy* (``M_F = 1``):
  the whole input propagated with the published sharing formula, used to rescale the scores.
- the *feature copies*: the input restricted to one feature each.
- optionally the *baseline copy*: the baseline itself, so that contributions of ``x - baseline``
  plus the baseline's own share add up to the model's output.

Copies other than the gate copy are the *sharing copies*: they receive shares of every bias.

A propagated tensor holds the copies along dim 0, one row per copy (N*C rows), or, after a reshape
that merges dim 0 with the following ones (a vision transformer's windows), ``m`` consecutive rows
per copy (N*C*m rows, copy-major): [`CopyLayout.group`][ctc_plugin.ctc.layout.CopyLayout.group]
views both as (N, C, ...), the second as (N, C, m, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CopyLayout:
    """The copies of one example in one CTC pass.

    Attributes:
        examples: Number of examples N in the user's batch.
        features: Number of feature copies in this pass.
        reference_full: Whether a reference full copy (``M_F``) is present.
        baseline: Whether a baseline copy is present.
        presence: Optional (N, S) bool tensor saying which sharing copies carry a feature that is
            present in the example (absent features never receive bias shares).
    """

    examples: int
    features: int
    reference_full: bool
    baseline: bool
    presence: torch.Tensor | None = None

    @property
    def copies(self) -> int:
        """Copies per example, the gate copy included."""
        return 1 + int(self.reference_full) + self.features + int(self.baseline)

    @property
    def batch(self) -> int:
        """Leading size of every tensor the pass propagates (examples x copies)."""
        return self.examples * self.copies

    @property
    def sharing(self) -> int:
        """Number of sharing copies per example (all but the gate copy)."""
        return self.copies - 1

    @property
    def first_feature(self) -> int:
        """Index of the first feature copy within an example's group."""
        return 1 + int(self.reference_full)

    def group(self, tensor: torch.Tensor) -> torch.Tensor:
        """View a propagated tensor (N*C, ...) as (N, C, ...); always a view, never a copy.

        A tensor of N*C*m rows (each copy's rows merged with another dim) is viewed as
        (N, C, m, ...).
        """
        if tensor.shape[0] == self.batch:
            return tensor.unflatten(0, (self.examples, self.copies))
        return tensor.unflatten(0, (self.examples, self.copies, -1))

    @staticmethod
    def ungroup(grouped: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The flat form of a grouped tensor, with the rows of ``like`` (the rule's input)."""
        return grouped.reshape(-1, *grouped.shape[3 if grouped.dim() > like.dim() + 1 else 2 :])
