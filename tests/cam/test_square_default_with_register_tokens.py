"""The square default of ``tokens_to_grid`` is refused where it differs from the patch grid.

A ViT with 4 x 4 patches, a class token and 8 register tokens has 25 tokens: the largest square
that fits is 5 x 5, which puts the wrong tokens on the grid (the patch embedding made 4 x 4).
With the grid given, with fewer extra tokens, or with patches that do not divide the image (the
patch convolution rounds down), the maps are made.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam import tokens_to_grid


class RegisterViT(nn.Module):
    """Patch tokens (4 x 4 patches of 4 pixels) after ``extra`` class/register tokens."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.extra = extra
        self.embed = nn.Conv2d(3, 8, 4, 4)
        self.extra_tokens = nn.Parameter(torch.randn(1, extra, 8))
        self.blocks = nn.Sequential(*[EncoderBlock(2, 8, 16, 0.0, 0.0) for _ in range(2)])
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.extra_tokens.expand(len(x), -1, -1), tokens], 1)
        return self.head(self.blocks(tokens)[:, self.extra :].mean(1))


def _maps(model: nn.Module, reshape, x: torch.Tensor) -> torch.Tensor:
    cam = IntegrativeCAM(model.eval(), layers=list(model.blocks), reshape_transform=reshape)
    return cam.attribute(x, target=[0, 2])


def test_nine_extra_tokens_with_the_square_default_are_refused_naming_the_grid():
    model, x = RegisterViT(extra=9), torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"5 x 5 patch grid.*4 x 4 grid.*grid=\(4, 4\)"):
        _maps(model, tokens_to_grid, x)
    assert not any(block._forward_hooks for block in model.blocks)


def test_the_found_layers_of_such_a_model_are_refused_too():
    model, x = RegisterViT(extra=9).eval(), torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"5 x 5 patch grid"):
        IntegrativeCAM(model).attribute(x, target=[0, 2])


def test_with_the_grid_given_the_same_model_is_explained():
    model, x = RegisterViT(extra=9), torch.rand(2, 3, 16, 16)
    maps = _maps(model, functools.partial(tokens_to_grid, grid=(4, 4)), x)
    assert maps.shape == (2, 1, 16, 16) and torch.isfinite(maps).all()


def test_a_class_token_and_four_registers_keep_the_square_default():
    model, x = RegisterViT(extra=5), torch.rand(2, 3, 16, 16)
    default = _maps(model, tokens_to_grid, x)
    given = _maps(model, functools.partial(tokens_to_grid, grid=(4, 4)), x)
    torch.testing.assert_close(default, given)


class RoundedPatchViT(RegisterViT):
    """14-pixel patches on a 125-pixel image: the patch convolution rounds down to 8 x 8."""

    def __init__(self, extra: int) -> None:
        super().__init__(extra)
        self.embed = nn.Conv2d(3, 8, 14, 14)


def test_a_patch_grid_that_rounds_the_image_down_keeps_the_square_default():
    model, x = RoundedPatchViT(extra=5), torch.rand(2, 3, 125, 125)
    default = _maps(model, tokens_to_grid, x)
    given = _maps(model, functools.partial(tokens_to_grid, grid=(8, 8)), x)
    torch.testing.assert_close(default, given)
