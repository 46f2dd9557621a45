"""Properties every CTC pass must have, whatever the model: shared by the property tests."""

from __future__ import annotations

import random
from contextlib import nullcontext

import torch

from ctc_plugin import CTC

TIGHT = {"rtol": 1e-9, "atol": 1e-10}


def assert_examples_independent_of_their_batch(ctc: CTC, x, mask, target) -> None:
    """Each example explained alone gives its row of the batch's explanation."""
    together = ctc.attribute(x, target=target, feature_mask=mask)
    for i in range(x.shape[0]):
        alone = ctc.attribute(
            x[i : i + 1], target=target, feature_mask=mask[i : i + 1] if mask.shape[0] > 1 else mask
        )
        torch.testing.assert_close(alone, together[i : i + 1], **TIGHT)


def assert_chunks_change_nothing(ctc: CTC, x, mask, target, per_eval: int) -> None:
    """Features in chunks of ``per_eval`` copies give the one-pass explanation."""
    once = ctc.attribute(x, target=target, feature_mask=mask)
    chunked = ctc.attribute(x, target=target, feature_mask=mask, perturbations_per_eval=per_eval)
    torch.testing.assert_close(chunked, once, **TIGHT)


def assert_relabelling_permutes_scores(ctc: CTC, x, mask, target, rng: random.Random) -> None:
    """New feature ids give the same attributions and the scores in the new ids' columns."""
    attr, scores = ctc.attribute(x, target=target, feature_mask=mask, return_feature_scores=True)
    ids = scores.ids.tolist()
    new_ids = rng.sample(range(100), len(ids))
    relabelled = mask.clone()
    for old, new in zip(ids, new_ids):
        relabelled[mask == old] = new
    attr2, scores2 = ctc.attribute(
        x, target=target, feature_mask=relabelled, return_feature_scores=True
    )
    torch.testing.assert_close(attr2, attr)
    for column, new in enumerate(new_ids):
        moved = scores2.ids.tolist().index(new)
        torch.testing.assert_close(scores2.scores[:, moved], scores.scores[:, column])


def per_feature(values: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(N, K) sums of per-element values over each feature."""
    mask = mask.expand(values.shape)
    return torch.stack([(values * (mask == i)).flatten(1).sum(1) for i in ids.tolist()], 1)


def linearised_gradient_x_input(model, x, target):
    """Gradient x input of the model's plain-torch linearisation at its gates (the oracle)."""
    return linearised_gradient(model, x, [target] * x.shape[0]) * x


def linearised_gradient(model, x, targets) -> torch.Tensor:
    """The gradient at ``x`` of the model linearised at its gates, one target class per example.

    Models of `ctc_plugin.testing` with parts autograd does not linearise (normalisation
    statistics, smooth activations, attention) run their plain-torch linearisation
    (``model.linearised()``); a ReLU CNN's linearisation at its gates is autograd's own.
    """
    leaf = x.clone().requires_grad_(True)
    linearised = model.linearised() if hasattr(model, "linearised") else nullcontext()
    with linearised:
        chosen = model(leaf).gather(1, torch.as_tensor(targets).view(-1, 1))
        (gradient,) = torch.autograd.grad(chosen.sum(), leaf)
    return gradient


def per_example_targets(target: int, classes: int, n: int) -> list[int]:
    """One target class per example, ``target`` for the first and the next classes after it."""
    return [(target + i) % classes for i in range(n)]


def per_example_baselines(x: torch.Tensor, seed: int, low: float, high: float) -> torch.Tensor:
    """A baseline of its own for every example: uniform noise in ``[low, high)``, like ``x``."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype)
    return low + (high - low) * noise
