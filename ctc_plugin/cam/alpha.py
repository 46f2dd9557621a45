"""The generalised Grad-CAM++ alpha: channel weights for a smooth function of the class score.

Grad-CAM++ explains ``Y = exp(S)`` rather than the score ``S``. For any smooth ``phi`` and a
piecewise-linear network (second derivatives of ``S`` vanish almost everywhere), the derivatives
of ``Y = phi(S)`` with respect to a feature map ``A`` are ``phi' g``, ``phi'' g**2`` and
``phi''' g**3`` with ``g = dS/dA``, so the Grad-CAM++ closed form becomes:

    alpha_ij^k = phi'' g_ij^2 / (2 phi'' g_ij^2 + phi''' g_ij^3 sum_ab A_ab^k)
    w_k        = sum_ij alpha_ij^k relu(phi' g_ij)

``phi = exp`` gives Grad-CAM++ exactly (``phi' = phi'' = phi'''`` cancels). With ``phi`` the
identity, ``phi'' = phi''' = 0`` and alpha is ``0/0``: the weights fall back to Grad-CAM's
``w_k = sign(phi') mean_ij g_ij`` (Grad-CAM of ``Y``; ``phi'`` > 0 for every built-in).

The derivatives enter alpha only through their ratio, and ``relu(phi' g) = |phi'| relu(sign(phi')
g)`` only scales every map of one example by the same positive number, which the per-layer min-max
normalisation removes. So each example is described by three numbers
([`AlphaTerms`][ctc_plugin.cam.alpha.AlphaTerms]): ``sign(phi')`` and ``(phi'', phi''')`` divided by
``max(|phi''|, |phi'''|)``. The built-ins give these ratios directly (`Phi.ratios`), so they
hold at any score, also where ``exp(S)`` or ``sigmoid(S)`` overflow or underflow float64 (past
about 745 either way); a ``phi'`` of 0 at the score is refused (every map would be 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

#: Added to the alpha denominator, as pytorch-grad-cam's ``GradCAMPlusPlus`` does.
ALPHA_EPS = 1e-6

ScalarFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Phi:
    """A smooth function of the class score with its first three derivatives.

    Each callable maps a tensor of scores to a tensor of the same shape, elementwise.

    Attributes:
        d1: First derivative ``phi'``.
        d2: Second derivative ``phi''``.
        d3: Third derivative ``phi'''``.
        name: A label for error messages and reprs.
        ratios: Optional: a number of the sign of the first derivative, and the second and
            third divided by one positive number per score, so that none overflows or
            underflows where the derivatives do (``exp`` at a score of 800 or -800); only these
            enter the weights. The built-ins have it; without it the three derivatives are
            evaluated and must be finite.
    """

    d1: ScalarFn
    d2: ScalarFn
    d3: ScalarFn
    name: str = "custom"
    ratios: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]] | None = None


def _exp_ratios(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``exp``'s three derivatives divided by ``exp(s)``: all 1, at every score."""
    one = torch.ones_like(s)
    return one, one, one


def _softplus_ratios(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Softplus's first derivative ``p > 0``; the second and third divided by ``p r``.

    They are ``p r`` and ``p r (r - p)``, with ``p = sigmoid(s)`` and ``r = sigmoid(-s)``;
    either is 0 in float64 beyond a score of about 745.
    """
    return torch.ones_like(s), torch.ones_like(s), torch.sigmoid(-s) - torch.sigmoid(s)


def _sigmoid_ratios(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The sigmoid's derivatives ``q``, ``q (r - p)``, ``q (1 - 6 q)`` divided by ``q = p r``.

    ``q`` is 0 in float64 beyond a score of about 745 either way; the ratios stay +-1 and 1.
    """
    p, r = torch.sigmoid(s), torch.sigmoid(-s)
    return torch.ones_like(s), r - p, 1 - 6 * p * r


def _sigmoid_terms(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The first three derivatives of the sigmoid at ``s``, accurate for large ``|s|``.

    ``1 - sigmoid(s)`` is taken as ``sigmoid(-s)``: computed as a difference it is exactly 0 in
    float64 for ``s`` above ~37, which made every derivative 0 (an all-zero map for
    ``phi="sigmoid"``, Grad-CAM weights instead of the alpha for ``"softplus"``).
    """
    p, r = torch.sigmoid(s), torch.sigmoid(-s)
    q = p * r
    return q, q * (r - p), q * (1 - 6 * q)


#: The built-in choices of ``phi``.
BUILTIN_PHI: dict[str, Phi] = {
    "exp": Phi(torch.exp, torch.exp, torch.exp, "exp", _exp_ratios),
    "softplus": Phi(
        torch.sigmoid,
        lambda s: _sigmoid_terms(s)[0],
        lambda s: _sigmoid_terms(s)[1],
        "softplus",
        _softplus_ratios,
    ),
    "sigmoid": Phi(
        lambda s: _sigmoid_terms(s)[0],
        lambda s: _sigmoid_terms(s)[1],
        lambda s: _sigmoid_terms(s)[2],
        "sigmoid",
        _sigmoid_ratios,
    ),
    "identity": Phi(
        torch.ones_like,
        torch.zeros_like,
        torch.zeros_like,
        "identity",
    ),
}


def _derivatives_by_autodiff(fn: ScalarFn) -> Phi:
    """Return ``fn`` with its derivatives taken by ``torch.func`` (elementwise, via vmap)."""
    d1 = torch.func.grad(fn)
    d2 = torch.func.grad(d1)
    d3 = torch.func.grad(d2)
    name = getattr(fn, "__name__", "callable")
    phi = Phi(torch.func.vmap(d1), torch.func.vmap(d2), torch.func.vmap(d3), name)
    _check_differentiable(phi)
    return phi


def _check_differentiable(phi: Phi) -> None:
    """Take ``phi``'s third derivative once, at 0: refuse what ``torch.func`` cannot differentiate.

    The function is refused when it is given, rather than by torch during a call.

    Raises:
        TypeError: Naming ``phi`` and what to write instead, with torch's reason chained.
    """
    try:
        phi.d3(torch.zeros(1, dtype=torch.float64))
    except Exception as error:  # torch.func's errors have no common type
        raise TypeError(
            f"phi {phi.name!r} could not be differentiated by torch.func ({error}); write it as "
            "a function of a 0-d tensor returning a 0-d tensor, with torch operations (e.g. "
            "lambda s: torch.log1p(torch.exp(s))), or pass a Phi with explicit derivatives"
        ) from error


def resolve_phi(phi: str | Phi | ScalarFn) -> Phi:
    """Turn the user's ``phi`` argument into a [`Phi`][ctc_plugin.cam.Phi].

    Args:
        phi: ``"exp"`` (Grad-CAM++), ``"softplus"``, ``"sigmoid"``, ``"identity"`` (Grad-CAM
            weights), a [`Phi`][ctc_plugin.cam.Phi] with explicit derivatives, or a scalar function
            of a 0-d tensor (written with torch operations) whose derivatives are then taken by
            ``torch.func``.

    Raises:
        ValueError: For an unknown name.
        TypeError: For anything else that is not callable, and for a function ``torch.func``
            cannot differentiate (one that returns no 0-d tensor, or leaves torch for Python
            numbers, as ``math.exp`` does).
    """
    if isinstance(phi, Phi):
        return phi
    if isinstance(phi, str):
        if phi not in BUILTIN_PHI:
            raise ValueError(f"unknown phi {phi!r}; expected one of {sorted(BUILTIN_PHI)}")
        return BUILTIN_PHI[phi]
    if callable(phi):
        return _derivatives_by_autodiff(phi)
    raise TypeError(f"phi must be a name, a Phi or a callable, got {type(phi).__name__}")


@dataclass(frozen=True)
class AlphaTerms:
    """Per-example constants of the generalised alpha, shaped (N, 1, 1, 1) for broadcasting.

    Attributes:
        sign: ``sign(phi'(S))``; it decides which gradients count as positive evidence.
        p2: ``phi''(S)`` divided by ``max(|phi''|, |phi'''|)``.
        p3: ``phi'''(S)`` divided by the same number.
        gradcam: True (per example) where ``phi'' = 0`` (the identity; the sigmoid at a
            score of 0): every alpha would be 0, so Grad-CAM weights are used.
        all_positive: Whether ``sign`` is +1 for every example.
        all_gradcam: Whether every example uses Grad-CAM weights.
        any_gradcam: Whether some example does.
        opposite: ``(N, 1, 1, 1)``: where ``phi''`` and ``phi'''`` have other signs along the
            evidence (`gradcampp_weights` clamps those examples' alphas).
        any_opposite: Whether some example is such.
    """

    sign: Tensor
    p2: Tensor
    p3: Tensor
    gradcam: Tensor
    all_positive: bool = field(init=False)
    all_gradcam: bool = field(init=False)
    any_gradcam: bool = field(init=False)
    opposite: Tensor = field(init=False)
    any_opposite: bool = field(init=False)

    def __post_init__(self) -> None:
        # Summaries read by every layer's hook, computed once per call (each bool() waits for
        # the device: in a layer's hook it would stall the backward pass at every stage).
        object.__setattr__(self, "all_positive", bool((self.sign > 0).all()))
        object.__setattr__(self, "all_gradcam", bool(self.gradcam.all()))
        object.__setattr__(self, "any_gradcam", bool(self.gradcam.any()))
        # the second and third derivative of other signs along the evidence, whose gradients
        # have the sign of the first (exp(-S) is the mirror of exp(S): not one of them)
        opposite = self.p2 * self.p3 * self.sign < 0
        object.__setattr__(self, "opposite", opposite)
        object.__setattr__(self, "any_opposite", bool(opposite.any()))

    def to(self, dtype: torch.dtype) -> AlphaTerms:
        """These terms in ``dtype`` (that of a stage's map), ``self`` where they are already."""
        if self.sign.dtype == dtype:
            return self
        # the summaries as this call computed them (reading them again from the device in
        # every stage's hook would wait for it there)
        converted = object.__new__(AlphaTerms)
        for name, value in vars(self).items():
            if name in ("sign", "p2", "p3"):
                value = value.to(dtype)
            object.__setattr__(converted, name, value)
        return converted


def alpha_terms(phi: Phi, scores: Tensor) -> AlphaTerms:
    """Evaluate ``phi``'s derivatives at the class scores and normalise them.

    Args:
        phi: The function.
        scores: The target scores ``S``, shape (N,).

    Raises:
        TypeError: If a derivative returns no tensor.
        ValueError: If a derivative is not finite or has the wrong shape.
    """
    s = scores.detach().double()  # exp(S) overflows float32 for logits above ~88
    if phi.ratios is not None:
        d1, d2, d3 = phi.ratios(s)
    else:
        d1, d2, d3 = phi.d1(s), phi.d2(s), phi.d3(s)
    for label, value in (("phi'", d1), ("phi''", d2), ("phi'''", d3)):
        if not isinstance(value, Tensor):
            raise TypeError(
                f"{phi.name}: {label} returned a {type(value).__name__}; each derivative of a "
                "Phi must return a tensor of the scores' shape, e.g. torch.ones_like(s)"
            )
        if value.shape != s.shape:
            raise ValueError(
                f"{phi.name}: {label} returned shape {tuple(value.shape)}, "
                f"expected {tuple(s.shape)} (one value per example)"
            )
        if not torch.isfinite(value).all():
            raise ValueError(
                f"{phi.name}: {label} is not finite at scores {s.tolist()}; give a Phi whose "
                "ratios divide the derivatives by one positive number per score (see Phi), or "
                "a phi that does not overflow at such scores"
            )
    if not bool((d1 != 0).all()):
        raise ValueError(
            f"{phi.name}: phi' is 0 at scores {s[d1 == 0].tolist()}: Y = phi(S) does not change "
            "with the score there, so no gradient is evidence and every map would be 0; choose "
            "a phi whose derivative is not 0 at the class scores (the built-ins' never is)"
        )
    scale = torch.maximum(d2.abs(), d3.abs())
    # phi'' = 0: every alpha is 0 and the map would be 0 (the sigmoid at a score of 0)
    gradcam = d2 == 0
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    # in the dtype the stage maps are computed in (float32 at least): not rounded to half
    shape, dtype = (-1, 1, 1, 1), torch.promote_types(scores.dtype, torch.float32)
    return AlphaTerms(
        sign=torch.sign(d1).to(dtype).reshape(shape),
        p2=(d2 / safe).to(dtype).reshape(shape),
        p3=(d3 / safe).to(dtype).reshape(shape),
        gradcam=gradcam.reshape(shape),
    )


def gradcam_weights(grad: Tensor, terms: AlphaTerms | None = None) -> Tensor:
    """Grad-CAM channel weights of ``Y = phi(S)``: ``sign(phi') * mean_ij g_ij``, shape (N, C).

    ``dY/dA = phi' g``; ``|phi'|`` scales every map of an example alike (min-max removes it),
    but its sign decides which channels count for ``Y`` (for ``phi(S) = -S``: the weights of
    ``-S``). Without ``terms`` the sign is +1 (an increasing ``phi``, as every built-in one).
    """
    weights = grad.mean(dim=(2, 3))
    if terms is None or terms.all_positive:
        return weights
    return weights * terms.sign.reshape(-1, 1)


def positive_part(grad: Tensor, terms: AlphaTerms) -> Tensor:
    """Return ``relu(sign(phi') * grad)``, the gradients that count as positive evidence."""
    return torch.relu(grad) if terms.all_positive else torch.relu(terms.sign * grad)


def _alpha_denominator(grad: Tensor, act: Tensor, terms: AlphaTerms) -> Tensor:
    """Return ``g^2 (2 p2 + p3 sum_ij(A) g) + eps``, the denominator of alpha, as a new tensor."""
    denominator = torch.mul(grad, terms.p3 * act.sum(dim=(2, 3), keepdim=True))
    return denominator.add_(2 * terms.p2).mul_(grad).mul_(grad).add_(ALPHA_EPS)


def gradcampp_weights(
    grad: Tensor, act: Tensor, terms: AlphaTerms, positive: Tensor | None = None
) -> Tensor:
    """Generalised Grad-CAM++ channel weights, shape (N, C).

    Computed as ``p2 * sum_ij relu(sign g) g^2 / (g^2 (2 p2 + p3 sum(A) g) + eps)``, the same
    number as ``sum_ij alpha_ij relu(sign g_ij)`` with two temporary tensors; terms whose
    numerator is 0 count 0 even where the denominator vanishes (it can, for negative gradients,
    where ``2 p2 + p3 sum(A) g`` changes sign).

    Args:
        grad: ``dS/dA``, shape (N, C, H, W).
        act: The feature map ``A``, same shape.
        terms: The per-example constants from [`alpha_terms`][ctc_plugin.cam.alpha.alpha_terms].
        positive: [`positive_part`][ctc_plugin.cam.alpha.positive_part] of ``grad`` if already
            computed; it is overwritten.
    """
    positive = positive_part(grad, terms) if positive is None else positive
    if terms.any_opposite:
        return _clamped_alpha_weights(grad, act, terms, positive, terms.opposite)
    numerator = positive.mul_(grad).mul_(grad)
    denominator = _alpha_denominator(grad, act, terms)
    # Where the numerator is 0 (no positive gradient) the term is 0, whatever the denominator:
    # for negative gradients it can cancel to exactly 0 in float32 (0/0 would be NaN).
    denominator.masked_fill_(numerator == 0, 1.0)
    return terms.p2.reshape(-1, 1) * numerator.div_(denominator).sum(dim=(2, 3))


def _clamped_alpha_weights(
    grad: Tensor, act: Tensor, terms: AlphaTerms, positive: Tensor, opposite: Tensor
) -> Tensor:
    """``sum_ij alpha_ij relu(sign g_ij)``, alpha outside [0, 1/2] taken as 1/2 where ``opposite``.

    Where phi's second and third derivatives have other signs along the evidence (softplus at
    positive scores; the sigmoid between about -1.32 and 0 and above about 1.32) the
    denominator ``2 p2 + p3 sum(A) g`` reaches 0 at strong evidence (a
    channel adding about two to the score): alpha grows past 1/2 before it, explodes there
    and turns negative past it, giving evidence a negative weight. An alpha outside [0, 1/2],
    the range Grad-CAM++'s ``exp`` gives for non-negative evidence, is taken as 1/2, its
    value at weak evidence (the expansion behind alpha no longer holds there).
    """
    denominator = _alpha_denominator(grad, act, terms)
    denominator.masked_fill_(positive == 0, 1.0)  # no evidence: the term is 0 (0/0 otherwise)
    alpha = torch.mul(grad, grad).mul_(terms.p2).div_(denominator)
    outside = (alpha < 0) | (alpha > 0.5)
    alpha = torch.where(opposite & outside, torch.full_like(alpha, 0.5), alpha)
    return alpha.mul_(positive).sum(dim=(2, 3))


def channel_weights(
    grad: Tensor, act: Tensor, terms: AlphaTerms, positive: Tensor | None = None
) -> Tensor:
    """Channel weights of one layer: generalised alpha, or Grad-CAM where alpha is 0/0.

    Args:
        grad: ``dS/dA``, shape (N, C, H, W).
        act: The feature map ``A``, same shape.
        terms: The per-example constants from [`alpha_terms`][ctc_plugin.cam.alpha.alpha_terms].
        positive: [`positive_part`][ctc_plugin.cam.alpha.positive_part] of ``grad`` if already
            computed; it may be overwritten.

    Returns:
        Weights of shape (N, C).
    """
    if terms.all_gradcam:
        return gradcam_weights(grad, terms)
    weights = gradcampp_weights(grad, act, terms, positive)
    if terms.any_gradcam:
        weights = torch.where(terms.gradcam.reshape(-1, 1), gradcam_weights(grad, terms), weights)
    return weights
