"""Normalisation statistics written out by hand are gates, as ``nn.LayerNorm``'s are.

ConvNeXt's channels-first LayerNorm (``(x - u).pow(2).mean(1)``), LLaMA's RMSNorm
(``x * torch.rsqrt(x.pow(2).mean(-1) + eps)``, also through ``.to(torch.float32)``), LayerNorms
through ``var``, ``std`` and ``torch.var_mean``, ConvNeXt-V2's GRN (``torch.norm`` and
``torch.linalg.vector_norm``), ``x.square()``, ``(x - u) * (x - u)`` and ``x ** 2``: the
statistic is computed for the full image (the gate copy) and divides or multiplies every copy.
``"proportional"`` scores add up to the logit (float64), equal the spec's, ``"none"`` is
gradient x input of the network with its statistics detached, and the Zennit attributor
equals the Captum class. A statistic (``var``, ``std``, ``norm``) used as a signal is refused by
name; a power of the signal is an activation as well (``test_gates_written_out.py``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .exactness import (
    OperationAfterConv,
    assert_equals_the_spec,
    assert_none_is_gradient_x_input,
    assert_proportional_adds_up,
    assert_refused,
    assert_zennit_equals_captum,
    held_fixed,
    random_case,
)

C = 8
EPS = 1e-6


class Statistic(nn.Module):
    """A normalisation written out by hand; ``frozen`` detaches its statistics."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.weight, self.bias = nn.Parameter(torch.ones(C)), nn.Parameter(torch.zeros(C))
        self.frozen = False

    def held(self, statistic: torch.Tensor) -> torch.Tensor:
        return statistic.detach() if self.frozen else statistic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b, kind = self.weight, self.bias, self.kind
        if kind == "ConvNeXt LayerNorm channels_first":  # the official code
            u = x.mean(1, keepdim=True)
            s = (x - u).pow(2).mean(1, keepdim=True)
            x = (x - u) / torch.sqrt(self.held(s) + EPS)
            return w[:, None, None] * x + b[:, None, None]
        if kind == "(x - u) * (x - u)":
            u = x.mean(1, keepdim=True)
            s = ((x - u) * (x - u)).mean(1, keepdim=True)
            return (x - u) * torch.rsqrt(self.held(s) + EPS) * w[:, None, None]
        if kind == "x ** 2":
            return x / (self.held(x**2).mean(1, keepdim=True) + EPS).sqrt()
        if kind == "square":
            return x * torch.rsqrt(self.held(x.square()).mean(1, keepdim=True) + EPS)
        if kind == "var_mean":
            var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
            return (x - mean) * torch.rsqrt(self.held(var) + EPS)
        t = x.permute(0, 2, 3, 1)  # channels last
        if kind in ("RMSNorm LLaMA", "RMSNorm LLaMA float32"):
            dtype = t.dtype
            h = t.to(torch.float32) if kind.endswith("float32") else t
            variance = h.pow(2).mean(-1, keepdim=True)
            h = h * torch.rsqrt(self.held(variance) + EPS)
            t = w * h.to(dtype)
        elif kind == "RMSNorm float32 type_as":
            h = t.float() * torch.rsqrt(self.held(t.float().pow(2)).mean(-1, keepdim=True) + EPS)
            t = h.type_as(t) * w
        elif kind == "var":
            var = t.var(-1, keepdim=True, unbiased=False)
            t = (t - t.mean(-1, keepdim=True)) / torch.sqrt(self.held(var) + EPS) * w + b
        elif kind == "std":  # the old BERT/timm LayerNorm: the sample standard deviation
            std = t.std(-1, keepdim=True)
            t = w * (t - t.mean(-1, keepdim=True)) / (self.held(std) + EPS) + b
        elif kind in ("GRN torch.norm", "GRN linalg.vector_norm"):  # ConvNeXt-V2
            if kind == "GRN torch.norm":
                gx = torch.norm(t, p=2, dim=(1, 2), keepdim=True)
            else:
                gx = torch.linalg.vector_norm(t, ord=2, dim=(1, 2), keepdim=True)
            nx = self.held(gx) / (self.held(gx).mean(dim=-1, keepdim=True) + 1e-6)
            t = w * (t * nx) + b + t
        else:
            raise AssertionError(kind)
        return t.permute(0, 3, 1, 2)


KINDS = [
    "ConvNeXt LayerNorm channels_first",
    "(x - u) * (x - u)",
    "x ** 2",
    "square",
    "var_mean",
    "RMSNorm LLaMA",
    "RMSNorm LLaMA float32",
    "RMSNorm float32 type_as",
    "var",
    "std",
    "GRN torch.norm",
    "GRN linalg.vector_norm",
]


class Net(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stem, self.block = nn.Conv2d(3, C, 3, padding=1), block
        self.conv, self.head = nn.Conv2d(C, C, 1), nn.Linear(C, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(self.block(self.stem(x)))).mean((2, 3)))


def _case(kind: str) -> tuple[Net, torch.Tensor, torch.Tensor]:
    return random_case(
        lambda: Net(Statistic(kind)), offsets={"block.weight": 1.0}, noise_in_parameter_dtype=True
    )


def _tolerance(kind: str) -> float:
    return 1e-5 if "float32" in kind else 1e-10  # the block computes in float32 itself


@pytest.mark.parametrize("kind", KINDS)
def test_proportional_scores_add_up_and_equal_the_spec(kind: str) -> None:
    model, x, mask = _case(kind)
    scores = assert_proportional_adds_up(model, x, mask, 1, relative=_tolerance(kind))
    assert_equals_the_spec(model, x, mask, 1, scores, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_one_image_alone_adds_up_to_its_logit(kind: str) -> None:
    model, x, mask = _case(kind)
    assert_proportional_adds_up(model, x[:1], mask, 3, relative=_tolerance(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_none_is_gradient_x_input_with_the_statistics_held_fixed(kind: str) -> None:
    model, x, mask = _case(kind)
    tolerance = dict(rtol=1e-4, atol=1e-6) if "float32" in kind else dict(rtol=1e-9, atol=1e-12)
    assert_none_is_gradient_x_input(model, x, mask, 1, held_fixed(model, model.block), **tolerance)


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
@pytest.mark.parametrize("kind", ["ConvNeXt LayerNorm channels_first", "GRN torch.norm"])
def test_the_zennit_attributor_equals_the_captum_class(kind: str, mode: str) -> None:
    model, x, mask = _case(kind)
    assert_zennit_equals_captum(model, x, mask, 1, mode)


@pytest.mark.parametrize(
    "operation, message",
    [
        (
            lambda s: s + s.norm(dim=1, keepdim=True),
            r"torch\.Tensor\.add \(the signal and torch\.Tensor\.norm\) in the model "
            r"\(OperationAfterConv\): the model's output is computed from its output",
        ),
        (
            lambda s: s - s.var(1, keepdim=True),
            r"torch\.Tensor\.sub \(the signal and torch\.Tensor\.var\) in the model "
            r"\(OperationAfterConv\): the model's output is computed from its output",
        ),
        (
            lambda s: s.var(1, keepdim=True).expand_as(s),
            r"torch\.Tensor\.var in the model \(OperationAfterConv\): .*not the feature.s "
            "contribution",
        ),
        (lambda s: s.pow(s), r"torch\.Tensor\.pow .*input-dependent exponent"),
        (lambda s: s / s.norm(), r"torch\.Tensor\.norm .*over dim 0"),
        (lambda s: s / torch.sqrt(s), r"torch\.sqrt .*no CTC rule"),
    ],
)
def test_a_statistic_used_as_a_signal_is_refused_by_name(operation, message: str) -> None:
    assert_refused(OperationAfterConv(operation, C).double().eval(), message)


@pytest.mark.parametrize(
    "norm",
    [nn.GroupNorm(2, C), nn.GroupNorm(1, C), nn.InstanceNorm2d(C, affine=True)],
    ids=["GroupNorm", "LayerNorm over C, H, W", "InstanceNorm"],
)
def test_torchs_normalisations_add_up_to_the_models_logit(norm: nn.Module) -> None:
    """torch's own normalisations (GatedPass.normalise): the population variance, as torch's.

    A sample variance (``correction=1``) in the rule would give the gate copy another value
    than the model's own normalisation, and the scores another sum than the model's logit.
    """
    model, x, mask = random_case(lambda: OperationAfterConv(norm, channels=C), add=True)
    assert_proportional_adds_up(model, x, mask, 1, relative=1e-10)
