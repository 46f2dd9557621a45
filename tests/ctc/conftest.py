"""Shared hypothesis strategies for the CTC tests."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from ctc_plugin.testing import CNNSpec, RandomCNN

from .properties import draw_case


@st.composite
def cnn_specs(draw: st.DrawFn) -> CNNSpec:
    """Random small architectures covering BatchNorm, residuals, concatenation and pooling."""
    return CNNSpec(
        width=draw(st.integers(2, 5)),
        blocks=draw(st.integers(1, 2)),
        batch_norm=draw(st.booleans()),
        conv_bias=draw(st.booleans()),
        residual=draw(st.booleans()),
        concat=draw(st.booleans()),
        pool=draw(st.sampled_from(["max", "avg"])),
        activation=draw(st.sampled_from(["relu", "leaky_relu"])),
        functional=draw(st.booleans()),
        inplace=draw(st.booleans()),
        normalise=draw(st.booleans()),
    )


@st.composite
def cases(draw: st.DrawFn, dtype: torch.dtype = torch.float64):
    """(model, inputs, feature_mask, target) with a random net, batch and partition."""
    spec = draw(cnn_specs())
    return draw_case(draw, lambda seed, size: RandomCNN(spec, seed=seed), spec.classes, dtype)
