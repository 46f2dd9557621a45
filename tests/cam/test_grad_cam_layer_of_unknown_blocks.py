"""Grad-CAM's layer on a transformer whose blocks are of no known type is refused, not guessed.

Such a model's last (N, C, H, W) map is its patch embedding's: Grad-CAM there would explain the
stem, not the blocks. `last_spatial_layer` (what ``grad_cam_layer`` and the command's
``gradcam`` use) raises `UnknownBlocksError` for a model with one convolution that computes
attention. Attention after a CNN (an attention-pooling head, as CLIP's ResNets have, a
transformer head) and attention inside the last stage are a CNN's, and keep their layer.
Attention tensors of four dimensions are never taken for the last map.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin.cam import (
    BLOCK_RESHAPES,
    UnknownBlocksError,
    grad_cam_layer,
    last_spatial_layer,
    tokens_to_grid,
)
from ctc_plugin.cli import main
from ctc_plugin.testing import RandomTransformer, TransformerSpec


def _flags(model: nn.Module) -> list[bool]:
    return [module.training for module in model.modules()]


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("attention", ["sdpa", "mha", "explicit", "einsum", "window"])
@pytest.mark.parametrize("depth", [1, 2])
def test_a_transformer_of_unknown_blocks_is_refused_naming_its_patch_embedding(attention, depth):
    spec = TransformerSpec(depth=depth, attention=attention, class_token=attention != "window")
    model = RandomTransformer(spec, seed=0).train()
    flags = _flags(model)
    x = torch.rand(1, 3, 8, 8)
    for find in (last_spatial_layer, grad_cam_layer):
        with pytest.raises(UnknownBlocksError) as caught:
            find(model, x)
        message = str(caught.value)
        assert f"computes attention {depth} time" in message and "has one convolution" in message
        assert "Conv2d, shape (1, 8, 4, 4)" in message
        assert "BLOCK_RESHAPES" in message and "tokens_to_grid" in message
        assert _flags(model) == flags and _hooks(model) == 0


def test_a_registered_block_type_gets_its_last_block(monkeypatch):
    model = RandomTransformer(TransformerSpec(depth=2, class_token=False), seed=0).eval()
    monkeypatch.setitem(BLOCK_RESHAPES, type(model.blocks[0]), tokens_to_grid)
    layer, reshape = grad_cam_layer(model, torch.rand(1, 3, 8, 8))
    assert layer is model.blocks[-1]
    assert (reshape.func, reshape.keywords) == (tokens_to_grid, {"grid": (4, 4)})


class _AttentionPool(nn.Module):
    """CLIP's ResNet head: the map's positions as tokens, one attention with a mean query."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(channels, 2, batch_first=True)
        self.head = nn.Linear(channels, classes)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        tokens = maps.flatten(2).transpose(1, 2)
        query = tokens.mean(1, keepdim=True)
        pooled, _ = self.attention(query, tokens, tokens, need_weights=False)
        return self.head(pooled[:, 0])


class _SpatialSelfAttention(nn.Module):
    """Attention over a map's positions that returns a map (a non-local block, BoTNet's).

    ``form``: ``"sdpa"``; ``"explicit"``: the scores of the map's own tokens written out
    (``q @ k^T``, softmax), whose queries and keys are views of the map; ``"baddbmm"``: the
    same with a relative position bias, ``torch.baddbmm(bias, q, k^T)``. The map stays a
    feature map.
    """

    def __init__(self, form: str, positions: int = 16) -> None:
        super().__init__()
        self.form = form
        self.bias = nn.Parameter(torch.randn(1, positions, positions))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        n, c, h, w = maps.shape
        tokens = maps.flatten(2).transpose(1, 2)
        if self.form == "explicit":
            mixed = (tokens @ tokens.transpose(1, 2)).softmax(-1) @ tokens
        elif self.form == "baddbmm":
            mixed = torch.baddbmm(self.bias, tokens, tokens.transpose(1, 2)).softmax(-1) @ tokens
        else:
            mixed = F.scaled_dot_product_attention(tokens, tokens, tokens)
        return maps + mixed.transpose(1, 2).reshape(n, c, h, w)


def _stem() -> list[nn.Module]:
    return [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1)]


def test_one_attention_after_a_cnns_convolutions_keeps_its_last_stage():
    torch.manual_seed(0)
    model = nn.Sequential(*_stem(), _AttentionPool(8, 4)).eval()
    assert grad_cam_layer(model, torch.rand(1, 3, 8, 8)) == (model[2], None)


@pytest.mark.parametrize("form", ["sdpa", "explicit", "baddbmm"])
def test_attention_inside_the_last_stage_keeps_that_stage(form):
    torch.manual_seed(0)
    stage = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), _SpatialSelfAttention(form))
    model = nn.Sequential(
        *_stem(), stage, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    ).eval()
    assert last_spatial_layer(model, torch.rand(1, 3, 8, 8)) is stage


def hand_written_vit() -> nn.Module:
    """A ``--model`` for the command: a ViT of blocks no table knows, taking 32 x 32 images."""
    return RandomTransformer(TransformerSpec(depth=2, patch=8), size=32, seed=0).eval()


@pytest.mark.parametrize(
    ("method", "python_way"),
    [("gradcam", "pytorch-grad-cam from Python"), ("integrative-cam", "ctc_plugin.IntegrativeCAM")],
)
def test_the_command_refuses_the_method_in_one_line_before_any_work(
    tmp_path, capsys, method, python_way
):
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / "red.png")
    model = "tests.cam.test_grad_cam_layer_of_unknown_blocks:hand_written_vit"
    argv = ["explain", str(tmp_path / "red.png"), "--model", model, "--method", method]
    argv += ["--resize", "32", "--crop", "32", "--segmenter", "grid", "--segments", "4"]
    argv += ["--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "f.png")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert f"{method} cannot find this transformer's blocks" in error
    assert python_way in error and f"leave {method} out of --method" in error
    assert not (tmp_path / "f.png").exists()


class _ClassAttentionViT(nn.Module):
    """CaiT's class attention written with ``torch.baddbmm``: a patch embedding, then the class
    token's one query reads the patch tokens, a learned bias per key added in the same call.

    The scores (N * heads, 1, T) are not square: the probe knows them as attention by the
    product that made them.
    """

    def __init__(self, dim: int = 8, heads: int = 2, tokens: int = 16) -> None:
        super().__init__()
        self.heads = heads
        self.stem = nn.Conv2d(3, dim, 2, stride=2)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim))
        self.query, self.key_value = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.bias = nn.Parameter(torch.randn(1, 1, tokens))
        self.head = nn.Linear(dim, 4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(images).flatten(2).transpose(1, 2)  # (N, T, D)
        n, t, d = tokens.shape
        split = lambda x: x.reshape(n, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q = split(self.query(self.class_token.expand(n, -1, -1))).flatten(0, 1)
        k, v = (split(x).flatten(0, 1) for x in self.key_value(tokens).chunk(2, dim=-1))
        scores = torch.baddbmm(self.bias, q, k.transpose(1, 2), alpha=(d // self.heads) ** -0.5)
        pooled = (scores.softmax(-1) @ v).view(n, self.heads, -1).flatten(1)
        return self.head(pooled)


def test_class_attention_written_with_baddbmm_is_counted_as_attention():
    """One query against the tokens: no square scores, the ``baddbmm`` that made them tells."""
    torch.manual_seed(0)
    with pytest.raises(UnknownBlocksError, match="computes attention 1 time"):
        last_spatial_layer(_ClassAttentionViT().eval(), torch.rand(1, 3, 8, 8))


class _PairwiseBlock(nn.Module):
    """A ViT block whose modules return four-dimensional tensors that are no feature map.

    Queries and keys through ``nn.Identity`` norms, (N, heads, T, d); attention probabilities
    through an ``nn.Dropout``, (N, heads, T, T); relative-position features of ConViT's kind
    through an ``nn.Linear``, (N, T, T, heads).
    """

    def __init__(self, dim: int = 8, heads: int = 2, tokens: int = 16) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = nn.Identity(), nn.Identity()
        self.attn_drop = nn.Dropout(0.1)
        self.pos_proj = nn.Linear(3, heads)
        self.register_buffer("rel", torch.rand(1, tokens, tokens, 3))
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, t, d = tokens.shape
        q, k, v = self.qkv(tokens).reshape(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        positions = self.pos_proj(self.rel).permute(0, 3, 1, 2)
        attention = ((q @ k.transpose(-2, -1)) + positions).softmax(dim=-1)
        mixed = self.attn_drop(attention) @ v
        return tokens + self.proj(mixed.transpose(1, 2).reshape(n, t, d))


class _PairwiseViT(nn.Module):
    def __init__(self, stem: list[nn.Module]) -> None:
        super().__init__()
        self.stem = nn.Sequential(*stem)
        self.blocks = nn.Sequential(_PairwiseBlock(), _PairwiseBlock())
        self.head = nn.Linear(8, 4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(images).flatten(2).transpose(1, 2)
        return self.head(self.blocks(tokens).mean(1))


def test_attention_tensors_of_four_dimensions_are_no_feature_map():
    """They had been taken for the last map (the last block's dropout of its probabilities).

    After a patch embedding the model is refused; after a convolutional stem (a CNN with a
    transformer head) the stem's map is the layer, as Grad-CAM explains such models.
    """
    torch.manual_seed(0)
    model = _PairwiseViT([nn.Conv2d(3, 8, 2, stride=2)]).eval()
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(UnknownBlocksError, match=r"\(stem, Sequential, shape \(1, 8, 4, 4\)\)"):
        last_spatial_layer(model, x)
    hybrid = _PairwiseViT(_stem()).eval()
    assert last_spatial_layer(hybrid, x) is hybrid.stem


class _ConvSelfAttention(nn.Module):
    """BoTNet's self-attention over a map written out: q, k, v by C -> C 1 x 1 convolutions,
    viewed as (N, heads, d, H W), and the result added to the map."""

    def __init__(self, channels: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Conv2d(channels, channels, 1) for _ in range(3))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        n, c, h, w = maps.shape
        q, k, v = (f(maps).view(n, self.heads, c // self.heads, -1) for f in self.projections)
        attention = torch.matmul(q.permute(0, 1, 3, 2), k).softmax(dim=-1)
        return maps + torch.matmul(v, attention.permute(0, 1, 3, 2)).view(n, c, h, w)

    @property
    def projections(self) -> tuple[nn.Module, ...]:
        """The query, key and value convolutions."""
        return self.query, self.key, self.value


@pytest.mark.parametrize("blocks", [1, 2])
def test_a_cnn_whose_last_stage_ends_in_convolutional_self_attention_keeps_that_stage(blocks):
    """Its queries and keys, followed back through the 1 x 1 convolutions, had marked the map
    itself as attention: a convolution of the attention was taken, or the CNN refused."""
    torch.manual_seed(0)
    stage = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1), *(_ConvSelfAttention(8) for _ in range(blocks))
    )
    model = nn.Sequential(
        *_stem(), stage, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    ).eval()
    assert last_spatial_layer(model, torch.rand(1, 3, 8, 8)) is stage


def test_a_cnn_with_a_transformer_head_keeps_its_last_map():
    """A DETR- or Query2Label-style head over the CNN's last map: Grad-CAM explains the CNN."""
    torch.manual_seed(0)

    class _Headed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(*_stem())
            layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
            self.head = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.out = nn.Linear(8, 4)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            tokens = self.trunk(images).flatten(2).transpose(1, 2)
            return self.out(self.head(tokens).mean(1))

    model = _Headed().eval()
    assert grad_cam_layer(model, torch.rand(1, 3, 8, 8)) == (model.trunk, None)


def test_a_submodule_compiled_with_fullgraph_is_probed_eagerly():
    """Dynamo traced the probe's torch function mode and failed with its own error."""
    if not hasattr(torch.compiler, "set_stance"):
        pytest.skip("this torch cannot run compiled code eagerly on request")
    torch.manual_seed(0)
    model = nn.Sequential(*_stem(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    model[2] = torch.compile(model[2], fullgraph=True, backend="eager")
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        model(x)  # compiled before the probe
    assert last_spatial_layer(model, x) is model[2]
