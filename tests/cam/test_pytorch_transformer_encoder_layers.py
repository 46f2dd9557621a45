"""PyTorch's own ``nn.TransformerEncoderLayer`` (batch first) is a known block.

The most common block of vision transformers written by hand was refused by Integrative CAM
and ``grad_cam_layer`` as a block of unknown type (``UnknownBlocksError``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin.cam import IntegrativeCAM, UnknownBlocksError, grad_cam_layer, tokens_to_grid


class HandWrittenViT(nn.Module):
    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.batch_first = batch_first
        self.embed = nn.Conv2d(3, 16, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.pos = nn.Parameter(torch.randn(1, 17, 16))
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], 1) + self.pos
        if not self.batch_first:
            return self.head(self.encoder(tokens.transpose(0, 1))[0])
        return self.head(self.encoder(tokens)[:, 0])


def test_its_layers_are_the_stages_as_when_chosen():
    model = HandWrittenViT().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    found, layers = IntegrativeCAM(model).attribute(x, 1, return_layer_maps=True)
    assert layers.names == ["encoder.layers.0", "encoder.layers.1"]
    chosen = IntegrativeCAM(
        model, layers=list(model.encoder.layers), reshape_transform=tokens_to_grid
    ).attribute(x, 1)
    torch.testing.assert_close(found, chosen, rtol=0, atol=0)
    layer, reshape = grad_cam_layer(model)
    assert layer is model.encoder.layers[1] and reshape is not None  # the last block


def test_sequence_first_layers_stay_unknown():
    with pytest.raises(UnknownBlocksError):
        IntegrativeCAM(HandWrittenViT(batch_first=False).eval()).attribute(
            torch.rand(1, 3, 32, 32), 1
        )


class EncoderHead(nn.Module):
    """A convolutional ``trunk`` of ``width`` channels under a DETR- or Query2Label-style head."""

    def __init__(self, trunk: nn.Module, width: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = trunk
        layer = nn.TransformerEncoderLayer(width, 2, 2 * width, dropout=0.0, batch_first=True)
        self.head = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.out = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.head(self.trunk(x).flatten(2).transpose(1, 2)).mean(1))


def test_over_a_cnns_maps_they_are_its_head_not_its_stages():
    """A DETR- or Query2Label-style head is no ViT's blocks: not taken for the stages (the CNN
    with its attention head is refused, as before), and Grad-CAM keeps the CNN's last map."""
    torch.manual_seed(0)
    trunk = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
    )
    model = EncoderHead(trunk, 8).eval()
    with pytest.raises(UnknownBlocksError, match="computes attention"):
        IntegrativeCAM(model).attribute(torch.rand(1, 3, 8, 8), 1)
    assert grad_cam_layer(model, torch.rand(1, 3, 8, 8))[0] is model.trunk


class PositionConvolutionViT(HandWrittenViT):
    """CPVT's position generator: a depthwise convolution over the patch grid between blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.position = nn.Conv2d(16, 16, 3, padding=1, groups=16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.embed(x)
        tokens = (grid + self.position(grid)).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], 1) + self.pos
        return self.head(self.encoder(tokens)[:, 0])


def test_a_depthwise_position_convolution_is_no_cnn():
    _, layers = IntegrativeCAM(PositionConvolutionViT().eval()).attribute(
        torch.rand(1, 3, 32, 32), 1, return_layer_maps=True
    )
    assert layers.names == ["encoder.layers.0", "encoder.layers.1"]


def test_one_stem_convolution_under_a_transformer_head_keeps_its_map_for_grad_cam():
    """A 3 x 3 stride-1 stem is no patch embedding: Grad-CAM explains its map (was refused as a
    vision transformer's patch embedding), and the layers are no stages."""
    torch.manual_seed(0)
    model = EncoderHead(nn.Conv2d(3, 8, 3, padding=1), 8).eval()
    assert grad_cam_layer(model, torch.rand(1, 3, 8, 8))[0] is model.trunk
    with pytest.raises(UnknownBlocksError, match="whose one convolution is a patch embedding"):
        IntegrativeCAM(model).attribute(torch.rand(1, 3, 8, 8), 1)


def test_a_cnn_that_patchifies_and_downsamples_so_keeps_its_head_apart():
    """ConvNeXt's 4 x 4 stem and 2 x 2 downsamplings are kernel-equals-stride convolutions and
    its 7 x 7 ones depthwise: an encoder head over its maps was taken for a ViT's blocks."""
    torch.manual_seed(0)
    trunk = nn.Sequential(
        nn.Conv2d(3, 8, 4, 4), nn.Conv2d(8, 8, 7, padding=3, groups=8), nn.ReLU(),
        nn.Conv2d(8, 16, 2, 2), nn.Conv2d(16, 16, 7, padding=3, groups=16), nn.ReLU(),
    )  # fmt: skip
    from ctc_plugin.cam import transformer_stages

    assert transformer_stages(EncoderHead(trunk, 16).eval()) == []
