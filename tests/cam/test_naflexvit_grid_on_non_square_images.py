"""Integrative CAM puts timm NaFlexViT's tokens on the patch grid of a non-square image.

NaFlexViT's default patch embedding is linear: it cuts the image into patches itself, so no
convolution shows the grid, and it returns the grid beside the tokens. A non-square image (the
model's point: native aspect ratios) was refused as if its grid were unknown; each stage's map
must be its block's tokens, less the prefix tokens, on that grid, as timm's own
``forward_intermediates`` puts them.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ctc_plugin import IntegrativeCAM
from ctc_plugin.testing import randomise_statistics_and_biases

timm = pytest.importorskip("timm")


def _received(model, x: Tensor) -> list[Tensor]:
    """Each stage's map as Integrative CAM receives it, in the order the gradients arrive."""
    seen: list[Tensor] = []

    def record(grad: Tensor, act: Tensor) -> Tensor:
        seen.append(act.detach().clone())
        return torch.ones(act.shape[0], dtype=act.dtype)

    IntegrativeCAM(model, phi="identity", layer_weights=record).attribute(x, 1)
    return seen


@pytest.mark.parametrize("size", [(32, 48), (48, 32), (36, 48)])
def test_naflexvit_stages_are_on_the_grid_of_a_non_square_image(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = timm.create_model(
        "naflexvit_base_patch16_gap",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=16,
        num_heads=2,
        num_classes=3,
        dynamic_img_pad=size == (36, 48),  # 36 rows padded to 40: a 5 x 6 grid
    )
    randomise_statistics_and_biases(model, seed=1, noise=0.05)
    model = model.eval().double()
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(3)).double()
    received = _received(model, x)
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True, output_fmt="NCHW")
    assert len(received) == len(expected) == 2
    for act, reference in zip(reversed(received), expected, strict=True):
        assert act.shape == reference.shape
        torch.testing.assert_close(act, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", ["NaFlexViT", "SigLIP 2"])
def test_grad_cam_layer_reads_the_grid_a_linear_patch_embedding_says(family: str) -> None:
    """grad_cam_layer(model, example) gives the reshape on the grid of a non-square example.

    NaFlexViT's embedding returns its grid, SigLIP 2's takes it as ``spatial_shapes``; the
    probe of ``grad_cam_layer`` read only convolutions, and refused both on a 16 x 32 image.
    """
    from ctc_plugin.cam import grad_cam_layer

    if family == "SigLIP 2":
        pytest.importorskip("transformers")
        from ctc_plugin.model_families import huggingface_classifier

        model, rows, columns = huggingface_classifier("SigLIP 2"), 2, 4  # patches of 8
    else:
        torch.manual_seed(0)
        model = (
            timm.create_model(
                "naflexvit_base_patch16_gap",
                pretrained=False,
                img_size=32,
                patch_size=8,
                depth=2,
                embed_dim=16,
                num_heads=2,
                num_classes=3,
            )
            .eval()
            .double()
        )
        rows, columns = 2, 4
    x = torch.rand(1, 3, 16, 32, generator=torch.Generator().manual_seed(3)).double()
    layer, reshape = grad_cam_layer(model, x)
    seen: list[Tensor] = []
    handle = layer.register_forward_hook(
        lambda module, inputs, output: seen.append(
            output[0] if isinstance(output, tuple) else output
        )
    )
    with torch.no_grad():
        model(x)
    handle.remove()
    tokens = seen[0]
    grid = reshape(tokens)
    assert grid.shape[-2:] == (rows, columns)
    patches = tokens[:, tokens.shape[1] - rows * columns :]
    expected = patches.reshape(1, rows, columns, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(grid, expected, rtol=0, atol=0)
