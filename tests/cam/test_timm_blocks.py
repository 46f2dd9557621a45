"""Integrative CAM finds the blocks of timm's vision transformers, MLPs and hybrids by itself.

The maps are checked against timm's own grids (``forward_intermediates(output_fmt="NCHW")``,
written by timm's authors), against the tokens reshaped by hand, and end to end: a token made to
carry the target's evidence must light up its own patch.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam import grad_cam_layer, tokens_to_grid, transformer_stages
from ctc_plugin.cam.integrative import UnknownBlocksError
from ctc_plugin.cam.reshapes import PatchTokens, TupleOutput, check_square_grid
from ctc_plugin.testing import randomise_statistics_and_biases

timm = pytest.importorskip("timm")

TINY = dict(patch_size=8, depth=2, embed_dim=16, num_heads=2, num_classes=3)


def _ready(model: nn.Module) -> nn.Module:
    """Random weights that reach the score (timm starts heads and layer scales at zero)."""
    randomise_statistics_and_biases(model, seed=1, noise=0.05)
    return model.eval().double()


def _vit(name: str = "vit_tiny_patch16_224", size: int | tuple[int, int] = 32, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=size, **{**TINY, **kwargs})
    return _ready(model)


def _swin():
    torch.manual_seed(0)
    model = timm.models.swin_transformer.SwinTransformer(
        img_size=32, patch_size=4, embed_dim=8, depths=(2, 1), num_heads=(1, 2), window_size=4,
        num_classes=3,
    )  # fmt: skip
    return _ready(model)


def _nest():
    torch.manual_seed(0)
    model = timm.models.nest.Nest(
        img_size=32, embed_dims=(8, 16, 32), num_heads=(1, 1, 1), depths=(1, 1, 2), num_classes=3
    )
    return _ready(model)


def _mixer():
    torch.manual_seed(0)
    model = timm.models.mlp_mixer.MlpMixer(
        num_classes=3, img_size=32, patch_size=8, num_blocks=2, embed_dim=16
    )
    return _ready(model)


def _mobilevit():
    torch.manual_seed(0)
    return _ready(timm.create_model("mobilevit_xxs", pretrained=False, num_classes=3))


#: model, input side, number of stages, reshape of the first stage (leading tokens dropped)
FOUND = {
    "vit": (_vit, 32, 2, PatchTokens(1)),
    "vit, 8 registers": (lambda: _vit(reg_tokens=8), 32, 2, PatchTokens(9)),
    "deit, distilled": (lambda: _vit("deit_tiny_distilled_patch16_224"), 32, 2, PatchTokens(2)),
    "vit, no class token": (
        lambda: _vit(class_token=False, global_pool="avg"),
        32,
        2,
        PatchTokens(0),
    ),
    "swin": (_swin, 32, 3, None),
    "nest": (_nest, 32, 4, None),
    "mlp-mixer": (_mixer, 32, 2, PatchTokens(0)),
    "mobilevit": (_mobilevit, 64, 10, None),
}


@pytest.mark.parametrize("name", FOUND)
def test_the_stages_of_a_timm_model_are_its_blocks(name: str) -> None:
    make, size, count, first = FOUND[name]
    model = make()
    stages = transformer_stages(model)
    assert len(stages) == count
    if first is not None:
        assert stages[0][1] == first  # the leading tokens the model says it has
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)).double()
    maps, layers = IntegrativeCAM(model).attribute(x, target=1, return_layer_maps=True)
    assert len(layers.names) == count and torch.isfinite(maps).all()
    assert maps.amax(dim=(1, 2, 3)).min() > 0.5  # real maps


def test_mobilevits_transformer_inside_its_blocks_is_no_stage_of_its_own() -> None:
    """MobileViT runs timm's ViT ``Block`` on unfolded patches (batch x patch area): no grid."""
    model = _mobilevit()
    found = [type(block).__name__ for block, _ in transformer_stages(model)]
    assert "Block" not in found
    assert found.count("MobileVitBlock") == 3 and found.count("BottleneckBlock") == 7


def test_a_timm_cnn_has_no_transformer_stages() -> None:
    """byobnet's ``BottleneckBlock`` is a stage only beside MobileViT blocks, not in GENet."""
    model = timm.create_model("gernet_s", pretrained=False, num_classes=3).eval()
    assert any(type(m).__name__ == "BottleneckBlock" for m in model.modules())
    assert transformer_stages(model) == []
    maps, layers = IntegrativeCAM(model).attribute(
        torch.rand(1, 3, 32, 32), target=0, return_layer_maps=True
    )
    assert all(step != ("layer",) for step in layers.steps)  # its convolutional stages


#: convolutional networks with attention in some blocks: input side, their blocks (timm's class
#: names, in order of first appearance); every block of their stages is a stage
HYBRID_CNNS = {
    "cpubone_nano": (64, ["ResidualBlock", "CPUBoneBlock"]),
    "lowformer_b0": (64, ["ResidualBlock", "LowFormerBlock"]),
    "shvit_s1": (128, ["BasicBlock"]),
    "iformer_t": (64, ["ConvBlock", "RepCPE", "SHMABlock", "FFN"]),
    "csatv2": (128, ["Block", "TransformerBlock"]),
    "mobilenetv4_hybrid_medium": (
        64,
        ["EdgeResidual", "UniversalInvertedResidual", "MobileAttention", "ConvBnAct"],
    ),
}


@pytest.mark.parametrize("name", HYBRID_CNNS)
def test_the_blocks_of_a_cnn_with_attention_blocks_are_its_stages(name: str) -> None:
    """They compute attention, so their convolutions were not taken for their stages and
    Integrative CAM refused them (no block of theirs was known)."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3).eval()
    found = [type(block).__name__ for block, _ in transformer_stages(model)]
    assert list(dict.fromkeys(found)) == HYBRID_CNNS[name][1]


def test_efficientnet_blocks_are_stages_only_beside_mobile_attention() -> None:
    """MobileNetV4's convolutional models keep their convolutional stages."""
    model = timm.create_model("mobilenetv4_conv_small", pretrained=False, num_classes=3)
    assert transformer_stages(model) == []


def _picked(output: object, reshape: object) -> tuple[torch.Tensor, object]:
    """The tensor a found block's reshape reads in its output, and the reshape of that tensor."""
    return reshape.select(output) if isinstance(reshape, TupleOutput) else (output, reshape)


def _block_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, object]]:
    """Each found block's output (the tensor in a tuple) during one pass, with its reshape."""
    outputs = []
    handles = [
        block.register_forward_hook(lambda m, i, o, r=reshape: outputs.append(_picked(o, r)))
        for block, reshape in transformer_stages(model)
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return outputs


GRIDS = {
    "vit, 8 registers": (lambda: _vit(reg_tokens=8), (32, 32)),
    "vit, 32 x 64": (lambda: _vit(size=(32, 64)), (32, 64)),
    "deit, distilled": (lambda: _vit("deit_tiny_distilled_patch16_224"), (32, 32)),
    "swin": (_swin, (32, 32)),
    "nest": (_nest, (32, 32)),
    "mlp-mixer": (_mixer, (32, 32)),
}


@pytest.mark.parametrize("name", GRIDS)
def test_block_maps_are_timms_own_grids_of_the_blocks(name: str) -> None:
    """Every map timm's ``forward_intermediates`` gives (a block's, or a stage's last block's
    output on its grid) is the reshape of a found block's output."""
    make, size = GRIDS[name]
    model = make()
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(2)).double()
    grid = torch.Size([1, -1, size[0] // 8, size[1] // 8])
    patch_grid = (lambda: tuple(grid[2:])) if "vit" in name or "deit" in name else None
    maps = [check_square_grid(r, size, patch_grid)(o) for o, r in _block_outputs(model, x)]
    with torch.no_grad():
        timms = model.forward_intermediates(x, intermediates_only=True, output_fmt="NCHW")
    assert timms
    for expected in timms:
        assert any(m.shape == expected.shape and torch.equal(m, expected) for m in maps)


def test_token_maps_are_the_patch_tokens_reshaped_by_hand() -> None:
    model = _vit(size=(32, 64), reg_tokens=4)  # a class token, 4 registers, 4 x 8 patches
    for tokens, reshape in _block_outputs(model, torch.rand(2, 3, 32, 64).double()):
        by_hand = tokens[:, 5:].reshape(2, 4, 8, -1).permute(0, 3, 1, 2)
        assert torch.equal(check_square_grid(reshape, (32, 64), lambda: (4, 8))(tokens), by_hand)


def _evidence_on(model: nn.Module, patch: int, target: int) -> None:
    """Make the last block's patch token ``patch`` carry the target's evidence.

    The model averages its patch tokens (no norm after the blocks) into a linear head, so the
    target's gradient is the same on every patch token; adding the head's row for the target to
    one token raises the target score through that token alone.
    """
    model.norm = nn.Identity()
    head = model.head.weight[target].detach()
    index = model.num_prefix_tokens + patch

    def bump(_module: nn.Module, _inputs: object, tokens: torch.Tensor) -> torch.Tensor:
        extra = torch.zeros_like(tokens)
        extra[:, index] = 10 * head / head.norm()
        return tokens + extra

    model.blocks[-1].register_forward_hook(bump)


@pytest.mark.parametrize(
    ("size", "registers"), [((32, 32), 8), ((32, 64), 0), ((64, 32), 4)], ids=str
)
def test_a_token_carrying_the_evidence_lights_up_its_own_patch(
    size: tuple[int, int], registers: int
) -> None:
    """8 registers and a class token before 16 patches: the square default would read 5 x 5."""
    model = _vit(size=size, reg_tokens=registers, global_pool="avg", fc_norm=False)
    rows, columns = size[0] // 8, size[1] // 8
    row, column = rows - 1, 1  # away from the centre and the diagonal
    _evidence_on(model, row * columns + column, target=2)
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(4)).double()
    _, layers = IntegrativeCAM(model).attribute(x, target=2, return_layer_maps=True)
    last = layers.maps[0, -1]
    peak = divmod(int(last.argmax()), size[1])
    assert (peak[0] // 8, peak[1] // 8) == (row, column)


def test_grad_cam_layer_of_a_timm_vit_that_reads_its_class_token_is_norm1() -> None:
    """pytorch-grad-cam's tutorial: ``blocks[-1].norm1`` (the last block's patch tokens reach no
    score when the class token alone is classified); the last block of an average-pooling ViT."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _vit()
    layer, reshape = grad_cam_layer(model)
    assert layer is model.blocks[-1].norm1 and reshape == PatchTokens(1)
    x = torch.rand(2, 3, 32, 32).double()
    with GradCAM(model, [layer], reshape_transform=reshape) as cam:
        maps = cam(x, targets=[ClassifierOutputTarget(0)] * 2)
    assert maps.max() > 0.5
    pooled = _vit(class_token=False, global_pool="avg")
    assert grad_cam_layer(pooled)[0] is pooled.blocks[-1]


def test_a_timm_block_that_cannot_be_reshaped_soundly_is_refused_with_the_reason() -> None:
    """Hiera's blocks outside a Hiera: their token order is the model's schedule."""
    from timm.models.hiera import HieraBlock

    torch.manual_seed(0)

    class Blocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(HieraBlock(8, 8, heads=1), HieraBlock(8, 8, heads=1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.blocks(x.flatten(2).mT).mean(1)

    model = Blocks().eval()
    assert transformer_stages(model) == []
    with pytest.raises(UnknownBlocksError, match="mask-unit order.*layers=.*BLOCK_RESHAPES"):
        IntegrativeCAM(model).attribute(torch.rand(1, 8, 4, 4), target=0)


def test_patch_tokens_take_the_patch_embeddings_grid_or_refuse_a_guess() -> None:
    grid = torch.arange(2 * 3 * 2 * 4, dtype=torch.float64).view(2, 3, 2, 4)
    tokens = torch.cat([torch.full((2, 3, 3), -1.0).double(), grid.flatten(2).mT], dim=1)
    reshape = PatchTokens(3)
    assert torch.equal(check_square_grid(reshape, (16, 32), lambda: (2, 4))(tokens), grid)
    with pytest.raises(ValueError, match=r"PatchTokens\(prefix=3, grid=\(rows, columns\)\)"):
        reshape(tokens)  # 8 patches make no square
    with pytest.raises(ValueError, match=r"not fill.*PatchTokens\(prefix=3, grid="):
        check_square_grid(reshape, (16, 32), lambda: (4, 4))(tokens)
    square = torch.cat([tokens, tokens[:, -8:]], dim=1)  # 16 patches, merged since the embedding
    assert check_square_grid(reshape, (32, 32), lambda: (8, 8))(square).shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="leave no patch"):
        reshape(tokens[:, :3])


def test_without_a_prefix_the_square_default_is_kept() -> None:
    """timm's ViT block in a model that does not say its leading tokens: tokens_to_grid."""
    vit = _vit()
    wrapper = nn.Sequential(*vit.blocks)
    assert all(r is tokens_to_grid for _, r in transformer_stages(wrapper))


def test_finding_blocks_never_imports_timm() -> None:
    code = (
        "import sys; from ctc_plugin import zoo; "
        "from ctc_plugin.cam import transformer_stages; "
        "assert transformer_stages(zoo.build('vit', 6)); "
        "assert 'timm' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


#: one model of each family (as in docs/scripts/timm_support.py): input side, stages found
FAMILIES = {
    "vit_tiny_patch16_224": (64, 12),
    "deit_tiny_patch16_224": (64, 12),
    "vit_small_patch14_dinov2": (64, 12),
    "vit_small_patch14_reg4_dinov2": (64, 12),
    "vit_base_patch16_clip_224": (64, 12),
    "eva02_tiny_patch14_224": (64, 12),
    "beit_base_patch16_224": (64, 12),
    "cait_xxs24_224": (64, 24),
    "xcit_nano_12_p16_224": (64, 12),
    "pit_ti_224": (64, 12),
    "crossvit_tiny_240": (240, 15),
    "twins_svt_small": (64, 18),
    "pvt_v2_b0": (64, 8),
    "swin_tiny_patch4_window7_224": (64, 12),
    "swinv2_tiny_window8_256": (64, 12),
    "nest_tiny": (64, 12),
    "davit_tiny": (64, 12),
    "gcvit_xxtiny": (64, 12),
    "maxvit_nano_rw_256": (64, 7),
    "coatnet_nano_rw_224": (64, 16),
    "tiny_vit_5m_224": (64, 12),
    "levit_128s": (64, 9),
    "efficientformer_l1": (224, 15),
    "efficientformerv2_s0": (64, 14),
    "edgenext_xx_small": (64, 12),
    "mobilevit_xxs": (64, 10),
    "mobilevitv2_050": (64, 9),
    "visformer_tiny": (64, 15),
    "mixer_s16_224": (64, 8),
    "resmlp_12_224": (64, 12),
    "gmlp_s16_224": (64, 30),
    "tnt_s_patch16_224": (64, 12),
    "mvitv2_tiny": (64, 10),
    "hiera_tiny_224": (64, 12),
    "cpubone_nano": (64, 7),
    "lowformer_b0": (64, 11),
    "shvit_s1": (128, 11),
    "iformer_t": (64, 26),
    "csatv2": (128, 18),
    "mobilenetv4_hybrid_medium": (64, 32),
    "mobilenetv5_base": (64, 40),
    "vit_tiny_r_s16_p8_224": (64, 12),
    "vit_relpos_small_patch16_224": (64, 12),
    "convit_tiny": (64, 12),
    "caformer_s18": (64, 18),
    "volo_d1_224": (64, 18),
    "vitamin_small_224": (64, 20),
    "swinv2_cr_tiny_ns_224": (64, 12),
    "sam2_hiera_tiny": (64, 12),
    "qwen3_vit_88m": (64, 12),
    "naflexvit_base_patch16_gap": (64, 12),
    "samvit_base_patch16": (64, 12),
    "gemma4_vit_167m": (64, 16),
    "deepseek_vit_412m": (56, 32),
}


def _family(name: str, size: int) -> nn.Module:
    torch.manual_seed(0)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=5, img_size=size)
    except TypeError:
        model = timm.create_model(name, pretrained=False, num_classes=5)
    return _ready(model)


def _assert_found_on_timms_own_grids(model: nn.Module, size: int, count: int) -> None:
    """Each map of ``forward_intermediates`` that is not a stem or head (a stage's output,
    after its norm where it has one, or the norm that ends a stage's blocks: CSATv2's) is the
    reshape of a found block's output, and Integrative CAM fuses the ``count`` blocks."""
    assert len(transformer_stages(model)) == count
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(5)).double()
    outputs = _block_outputs(model, x)
    norms = [m.norm for m in model.modules() if hasattr(m, "blocks") and hasattr(m, "norm")]
    stages = getattr(model, "stages", [])
    norms += [
        s[-1]
        for s in stages
        if isinstance(s, nn.Sequential) and len(s) and "Norm" in type(s[-1]).__name__
    ]
    maps = []
    for tokens, reshape in outputs:
        reshape = check_square_grid(reshape, (size, size))
        maps.append(reshape(tokens))
        for norm in norms:
            try:
                maps.append(reshape(norm(tokens)))
            except (RuntimeError, ValueError):  # a norm of another width
                pass
    with torch.no_grad():
        timms = model.forward_intermediates(x, intermediates_only=True, output_fmt="NCHW")
    found = [any(m.shape == t.shape and torch.allclose(m, t) for m in maps) for t in timms]
    # MaxViT's and CoAtNet's first map is the stem's, MobileViT's last the final convolution's
    assert sum(found) >= len(timms) - 1 and any(found)
    _, layers = IntegrativeCAM(model).attribute(x, target=1, return_layer_maps=True)
    assert len(layers.names) == count


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_each_timm_family_is_found_on_timms_own_grids(name: str) -> None:
    size, count = FAMILIES[name]
    _assert_found_on_timms_own_grids(_family(name, size), size, count)


def _metaformer() -> nn.Module:
    """CAFormer: two stages of separable convolutions, two of attention on patch tokens."""
    from timm.models.metaformer import Attention, LayerNorm2dNoBias, LayerNormNoBias, SepConv

    return timm.models.metaformer.MetaFormer(
        num_classes=5, depths=(1, 1, 1, 1), dims=(8, 8, 32, 32),
        token_mixers=(SepConv, SepConv, Attention, Attention),
        norm_layers=[LayerNorm2dNoBias] * 2 + [LayerNormNoBias] * 2,
    )  # fmt: skip


#: tiny models of the families whose blocks were added with the transformer and hybrid modules
#: of timm 1.0.31: builder, input side, stages found
TINY_FAMILIES = {
    "ConViT (class token after 2 of 3 blocks)": (
        lambda: timm.create_model(
            "convit_tiny", num_classes=5, img_size=32, embed_dim=16, depth=3, num_heads=2,
            local_up_to_layer=2, patch_size=8,
        ),
        32,
        3,
    ),
    "CAFormer": (_metaformer, 32, 4),
    "VOLO": (
        lambda: timm.models.volo.VOLO(
            num_classes=5, img_size=32, layers=(1, 1, 1, 1), embed_dims=(16, 32, 32, 32),
            num_heads=(1, 2, 2, 2),
        ),
        32,
        4,
    ),
    "Swin v2 CR": (
        lambda: timm.create_model(
            "swinv2_cr_tiny_ns_224", num_classes=5, img_size=32, embed_dim=8, depths=(1, 1),
            num_heads=(1, 2), window_size=4,
        ),
        32,
        2,
    ),
    "SAM 2 HieraDet": (
        lambda: timm.models.hieradet_sam2.HieraDet(
            num_classes=5, embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,)
        ),
        64,
        5,
    ),
    "Gemma 4 ViT": (
        lambda: timm.create_model(
            "gemma4_vit_167m", num_classes=5, img_size=32, embed_dim=32, depth=2, num_heads=2,
            head_dim=16, intermediate_size=64,
        ),
        32,
        2,
    ),
    "DeepSeek ViT": (
        lambda: timm.create_model(
            "deepseek_vit_412m", num_classes=5, img_size=28, embed_dim=32, depth=2, num_heads=2
        ),
        28,
        2,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_the_blocks_of_a_tiny_model_of_each_family_are_on_timms_own_grids(name: str) -> None:
    build, size, count = TINY_FAMILIES[name]
    torch.manual_seed(0)
    _assert_found_on_timms_own_grids(_ready(build()), size, count)


def test_convits_blocks_before_its_class_token_joins_hold_patch_tokens_alone() -> None:
    torch.manual_seed(0)
    model = _ready(TINY_FAMILIES["ConViT (class token after 2 of 3 blocks)"][0]())
    assert [reshape for _, reshape in transformer_stages(model)] == [
        PatchTokens(0),
        PatchTokens(0),
        PatchTokens(1),
    ]


def test_metaformers_without_attention_keep_their_convolutional_stages() -> None:
    """PoolFormer's and ConvFormer's blocks are found only beside attention (CAFormer)."""
    from timm.models.metaformer import MetaFormer, SepConv

    torch.manual_seed(0)
    model = MetaFormer(num_classes=5, depths=(1, 1), dims=(8, 16), token_mixers=SepConv).eval()
    assert transformer_stages(model) == []
    _, layers = IntegrativeCAM(model).attribute(
        torch.rand(1, 3, 32, 32), target=0, return_layer_maps=True
    )
    assert all(step != ("layer",) for step in layers.steps)  # its convolutional stages


def test_weight_standardisation_is_no_batchnorm_of_the_maps() -> None:
    """NFNet's convolutions standardise their weights with ``F.batch_norm`` (no running stats)."""
    torch.manual_seed(0)
    model = timm.create_model("nf_resnet26", pretrained=False, num_classes=5).eval().double()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    maps, layers = IntegrativeCAM(model).attribute(x, 1, return_layer_maps=True)
    assert maps.shape == (1, 1, 32, 32) and len(layers.names) > 10
