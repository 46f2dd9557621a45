"""Exactness checks of a CTC pass on one hand-built model, shared by the tests of its operations.

``"proportional"`` scores add up to the model's logit (and equal the spec's), ``"none"`` is
gradient x input of the network with its gates held fixed, the Zennit attributor equals the
Captum class, and an operation without a rule is refused by name and leaves the model as it was.
Each test passes its own tolerances: ``relative=`` bounds a largest relative error, the other
keywords go to ``torch.testing.assert_close``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn

from ctc_plugin import CTC, CTCAttributor, CTCComposite
from ctc_plugin.ctc.errors import UnsupportedOperationError
from ctc_plugin.ctc.speedups import SPEC, Speedups

from .properties import per_feature

#: ``"none"`` checked with the gradient shortcut (the default) and by its pass of copies.
SHORTCUT_AND_COPIES = (None, Speedups(gradient_shortcut=False))


def random_case(
    build: Callable[[], nn.Module],
    *,
    scale: float = 0.5,
    add: bool = False,
    offsets: dict[str, float] | None = None,
    noise_in_parameter_dtype: bool = False,
    first_id: int = 0,
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """``(model, x, mask)``: ``build()`` in float64 eval mode with seeded random parameters.

    The model is built after ``torch.manual_seed(0)``; one generator seeded 1 then draws every
    parameter (``randn * scale`` plus ``offsets[name]``, or added to the parameter with
    ``add``; drawn in float32 unless ``noise_in_parameter_dtype``) and two 8 x 8 images, and
    the mask is a 3 x 3 grid partition with ids from ``first_id``.
    """
    torch.manual_seed(0)
    model = build().double().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            dtype = parameter.dtype if noise_in_parameter_dtype else None
            noise = torch.randn(parameter.shape, generator=generator, dtype=dtype) * scale
            if add:
                parameter.add_(noise)
            else:
                parameter.copy_(noise + (offsets or {}).get(name, 0.0))
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=generator)
    rows = torch.arange(8) * 3 // 8
    return model, x, rows.view(1, 1, -1, 1) * 3 + rows.view(1, 1, 1, -1) + first_id


class OperationAfterConv(nn.Module):
    """A convolution, ``operation`` of its output, a spatial mean and a linear head.

    The model of a refusal test: ``operation`` is the one thing CTC must refuse by name.
    """

    def __init__(
        self, operation: Callable[[torch.Tensor], torch.Tensor], channels: int = 8
    ) -> None:
        super().__init__()
        self.operation = operation
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.head = nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.operation(self.stem(x)).mean((2, 3)))


def feature_scores(model, x, mask, target, mode: str = "proportional", speedups=None):
    """CTC's per-feature scores in ``mode``, under ``speedups`` (``None``: the default)."""
    ctc = CTC(model, bias_sharing=mode)
    if speedups is not None:
        ctc._speedups = speedups
    _, scores = ctc.attribute(x, target, feature_mask=mask, return_feature_scores=True)
    return scores


def _selected(output: torch.Tensor, target) -> torch.Tensor:
    """Each example's target logit: ``target`` one class for all, or one class per example."""
    if isinstance(target, int):
        return output[:, target]
    return output.gather(1, torch.as_tensor(target).view(-1, 1)).squeeze(1)


def assert_proportional_adds_up(model, x, mask, target, *, relative: float | None = None, **tol):
    """``"proportional"`` scores sum to the target logit of ``model(x)``; returns the scores.

    With ``relative``, each example's relative error is below it; otherwise the sums and the
    logits are ``assert_close`` with ``tol``.
    """
    scores = feature_scores(model, x, mask, target, "proportional")
    logits = _selected(model(x).detach(), target)
    if relative is not None:
        assert ((scores.scores.sum(1) - logits).abs() / logits.abs()).max() < relative
    else:
        torch.testing.assert_close(scores.scores.sum(1), logits, **tol)
    return scores


def assert_equals_the_spec(model, x, mask, target, scores, *, relative: float | None = None, **tol):
    """The spec's ``"proportional"`` scores (``SPEC``: no speed-up) equal ``scores``.

    With ``relative``, the largest difference is below ``relative`` times the largest score;
    otherwise the scores are ``assert_close`` with ``tol``.
    """
    slow = feature_scores(model, x, mask, target, "proportional", SPEC)
    if relative is not None:
        assert (slow.scores - scores.scores).abs().max() < relative * scores.scores.abs().max()
    else:
        torch.testing.assert_close(slow.scores, scores.scores, **tol)


def assert_proportional_is_exact(model, x, mask, target):
    """``"proportional"`` adds up (float64, 1e-10), equals the spec, and the first image alone
    gets the scores it gets in the batch; returns the scores of the batch."""
    scores = assert_proportional_adds_up(model, x, mask, target, rtol=1e-10, atol=1e-10)
    assert_equals_the_spec(model, x, mask, target, scores, rtol=1e-9, atol=1e-12)
    alone = assert_proportional_adds_up(model, x[:1], mask, target, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(alone.scores, scores.scores[:1], rtol=1e-9, atol=1e-12)
    return scores


def assert_same_scores_in_every_mode(model, other, x, mask, target, **tol) -> None:
    """``model`` and ``other`` (one network written two ways) give the same feature scores.

    In each of the three bias-sharing modes; ``tol`` goes to ``torch.testing.assert_close``.
    """
    for mode in ("none", "proportional", "reference"):
        torch.testing.assert_close(
            feature_scores(model, x, mask, target, mode).scores,
            feature_scores(other, x, mask, target, mode).scores,
            **tol,
        )


def assert_exact_in_every_mode(model, x, mask, target) -> None:
    """``"proportional"`` exact (`assert_proportional_is_exact`); ``"reference"`` and
    ``"none"`` give their spec's scores."""
    assert_proportional_is_exact(model, x, mask, target)
    for mode in ("reference", "none"):
        fast = feature_scores(model, x, mask, target, mode)
        slow = feature_scores(model, x, mask, target, mode, SPEC)
        torch.testing.assert_close(fast.scores, slow.scores, rtol=1e-9, atol=1e-12)


def held_fixed(model: nn.Module, flagged: nn.Module | None = None) -> Callable:
    """``model``'s forward with ``flagged.frozen`` set (default: ``model``'s): gates detached."""
    flagged = model if flagged is None else flagged

    def forward(x: torch.Tensor) -> torch.Tensor:
        flagged.frozen = True
        try:
            return model(x)
        finally:
            flagged.frozen = False

    return forward


def assert_none_is_gradient_x_input(
    model,
    x,
    mask,
    target,
    linearised: Callable[[torch.Tensor], torch.Tensor],
    *,
    speedups: Sequence[Speedups | None] = SHORTCUT_AND_COPIES,
    same_output: dict | None = None,
    **tol,
) -> None:
    """``"none"`` scores equal gradient x input, summed per feature, of ``linearised``.

    ``linearised`` is the network with its gates held fixed (see ``held_fixed``). The scores
    are computed under each of ``speedups`` and ``assert_close`` with ``tol``. With
    ``same_output`` (``assert_close``'s keywords), ``linearised`` first gives ``model``'s logits.
    """
    leaf = x.clone().requires_grad_(True)
    output = linearised(leaf)
    if same_output is not None:
        torch.testing.assert_close(output.detach(), model(x).detach(), **same_output)
    (gradient,) = torch.autograd.grad(_selected(output, target).sum(), leaf)
    for speedup in speedups:
        scores = feature_scores(model, x, mask, target, "none", speedup)
        expected = per_feature(gradient * x, mask, scores.ids)
        torch.testing.assert_close(scores.scores, expected, **tol)


def assert_zennit_equals_captum(model, x, mask, target: int, mode: str, **attributor) -> None:
    """The Zennit ``CTCAttributor`` gives the Captum class's attributions (1e-9 relative).

    ``attributor`` is passed on to ``CTCAttributor`` (``functional="raise"``, for example).
    """
    expected = CTC(model, bias_sharing=mode).attribute(x, target, feature_mask=mask)
    with torch.no_grad():
        classes = model(x).shape[1]  # the one-hot targets' width
    one_hot = torch.eye(classes, dtype=x.dtype)[[target] * x.shape[0]]
    composite = CTCComposite(bias_sharing=mode)
    with CTCAttributor(model, composite, feature_mask=mask, **attributor) as zennit:
        _, relevance = zennit(x, one_hot)
    torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-12)


def _hooks(model: nn.Module) -> list[tuple[str, list[int]]]:
    """How many hooks of each kind every module holds."""
    return [
        (name, [len(v) for k, v in vars(module).items() if "hooks" in k and isinstance(v, dict)])
        for name, module in model.named_modules()
    ]


def assert_refused(
    model: nn.Module,
    message: str,
    *,
    x: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    target: int = 0,
    modes: Sequence[str] = ("proportional",),
) -> UnsupportedOperationError:
    """CTC in each of ``modes`` raises ``UnsupportedOperationError`` matching ``message``.

    Afterwards the model holds the hooks it held before and no torch function mode is left
    on. ``x`` defaults to one random 8x8 image, ``mask`` to its top and bottom halves. Returns
    the last error.
    """
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64) if x is None else x
    mask = (torch.arange(8) // 4)[None, None, :, None].expand(1, 1, 8, 8) if mask is None else mask
    before = _hooks(model)
    for mode in modes:
        with pytest.raises(UnsupportedOperationError, match=message) as error:
            CTC(model, bias_sharing=mode).attribute(x, target, feature_mask=mask)
        assert _hooks(model) == before
        assert not torch._C._len_torch_function_stack()
    return error.value
