"""Integrative CAM puts SigLIP 2's tokens on the patch grid each call of the model says.

SigLIP 2's embeddings take the grid as ``spatial_shapes`` (a linear patch embedding: no
convolution shows it). A forward function that calls the model twice with grids of the same
number of patches but another shape (test-time augmentation by a quarter turn of a non-square
image) must get each call's tokens on that call's grid (the grid was once read in the backward
pass, when it was the last call's); the model given as its bound ``forward`` must read the grid
as the module does.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam.reshapes import PatchTokens
from ctc_plugin.cam.transformers import transformer_stages
from ctc_plugin.model_families import huggingface_classifier

pytest.importorskip("transformers")


def _received(forward, x: Tensor, **options) -> list[Tensor]:
    """Each stage's map as Integrative CAM receives it, in the order the gradients arrive."""
    seen: list[Tensor] = []

    def record(grad: Tensor, act: Tensor) -> Tensor:
        seen.append(act.detach().clone())
        return torch.ones(act.shape[0], dtype=act.dtype)

    IntegrativeCAM(forward, phi="identity", layer_weights=record, **options).attribute(x, 1)
    return seen


def _on_grid(tokens: Tensor, rows: int, columns: int) -> Tensor:
    """SigLIP 2's tokens (none leading) row-major on a grid: (N, D, rows, columns)."""
    return tokens.reshape(tokens.shape[0], rows, columns, -1).permute(0, 3, 1, 2)


class _QuarterTurnAverage(nn.Module):
    """Test-time augmentation: the mean of the logits of the image and of its quarter turn."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return (self.model(x) + self.model(torch.rot90(x, 1, (2, 3)))) / 2


def test_each_call_of_the_model_gets_its_own_grid() -> None:
    """A 16 x 32 image in patches of 8: a 2 x 4 grid, then 4 x 2 for its quarter turn."""
    model = huggingface_classifier("SigLIP 2")
    x = torch.rand(1, 3, 16, 32, generator=torch.Generator().manual_seed(0)).double()
    received = _received(_QuarterTurnAverage(model).eval(), x)
    with torch.no_grad():
        first = model.model(**model.model_inputs(x), output_hidden_states=True)
    expected = [_on_grid(hidden, 2, 4) for hidden in first.hidden_states[1:]]
    first_call = [act for act in received if act.shape[-2:] == (2, 4)]
    assert len(first_call) == len(expected), [tuple(act.shape) for act in received]
    for reference in expected:  # in any order: each one of the first call's stages
        assert any(torch.allclose(act, reference) for act in first_call)


def test_the_models_bound_forward_reads_the_grid_its_call_says() -> None:
    """The same layers and reshape as the module finds, given ``model.forward``: 16 x 32."""
    model = huggingface_classifier("SigLIP 2")
    x = torch.rand(1, 3, 16, 32, generator=torch.Generator().manual_seed(0)).double()
    stages = transformer_stages(model)
    layers = [module for module, _ in stages]
    assert {reshape for _, reshape in stages} == {PatchTokens(0)}
    by_module = _received(model, x, layers=layers, reshape_transform=PatchTokens(0))
    by_method = _received(model.forward, x, layers=layers, reshape_transform=PatchTokens(0))
    assert len(by_method) == len(by_module)
    for act, reference in zip(by_method, by_module, strict=True):
        torch.testing.assert_close(act, reference, rtol=0, atol=0)
