"""Shared hypothesis strategies for the CTC tests."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition


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
    seed = draw(st.integers(0, 10_000))
    batch = draw(st.integers(1, 3))
    size = draw(st.sampled_from([6, 8]))
    features = draw(st.integers(1, 6))
    per_example = draw(st.booleans())
    model = RandomCNN(spec, seed=seed).to(dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(batch, 3, size, size, generator=generator, dtype=dtype)
    mask = random_partition(size, size, features, seed=seed, batch=batch if per_example else 1)
    target = draw(st.integers(0, spec.classes - 1))
    return model, x, mask, target
