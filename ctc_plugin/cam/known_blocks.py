"""The tables of known block types, and of what models say about their blocks' tokens.

[`transformer_stages`][ctc_plugin.cam.transformer_stages] finds the blocks of torchvision's ViT,
Swin (v1 and v2) and MaxViT, of the timm families in ``TIMM_BLOCKS`` and the Hugging Face
``transformers`` families in ``HUGGINGFACE_BLOCKS`` (both matched by qualified class name:
neither library is ever imported here) and of any model whose blocks are of a type registered in
[`BLOCK_RESHAPES`][ctc_plugin.cam.BLOCK_RESHAPES], each with the reshape of its output (from
[`reshapes`][ctc_plugin.cam.reshapes]). The other tables hold what the models around the blocks
say: how many extra tokens lead a ViT's tokens (timm's ``num_prefix_tokens`` or the prefix
tables; for Hugging Face's, the tokens their embeddings put first and
``config.num_register_tokens``), a patch grid fixed when the model is built, the token order of
timm's and Hugging Face's Hiera (which only the model says), the blocks that cannot be found
soundly, with the reason (``TIMM_REFUSED``, ``HUGGINGFACE_REFUSED``: a Hiera block outside its
Hiera), and, for [`grad_cam_layer`][ctc_plugin.cam.grad_cam_layer], the classifiers that read
their leading tokens alone and the names of a ViT block's first LayerNorm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

from ctc_plugin.cam.reshapes import (
    BlockReshape,
    PatchTokens,
    Reshape,
    TupleOutput,
    UnrolledTokens,
    _grid_pair,
    _identity,
    blocks_of_blocks_to_grid,
    channels_last_to_grid,
    tokens_to_grid,
)


def _known_blocks() -> dict[type[nn.Module], Reshape]:
    """The transformer block types of torchvision and the reshape of their outputs."""
    from torchvision.models.maxvit import MaxVitLayer
    from torchvision.models.swin_transformer import SwinTransformerBlock, SwinTransformerBlockV2
    from torchvision.models.vision_transformer import EncoderBlock

    return {
        EncoderBlock: tokens_to_grid,
        SwinTransformerBlock: channels_last_to_grid,
        SwinTransformerBlockV2: channels_last_to_grid,
        MaxVitLayer: _identity,
    }


#: Block types of other models and the reshape of their outputs to (N, C, H, W) (a `TupleOutput`
#: for a block that returns a tuple); add yours.
BLOCK_RESHAPES: dict[type[nn.Module], BlockReshape] = {}

_PATCHES = PatchTokens(prefix=0)

#: timm's block classes (``module.qualname``, matched exactly, so timm is never imported here)
#: and the reshape of their outputs; ``None`` (alone, or as a `TupleOutput`'s reshape): (N, T, D)
#: tokens led by the model's own extra tokens, a `PatchTokens` of the number the model
#: says (``num_prefix_tokens``), on the grid it says where it says one (``_TIMM_GRID``), the
#: square default of ``tokens_to_grid`` where it says none.
TIMM_BLOCKS: dict[str, BlockReshape | None] = {
    # ViT, DeiT, DINOv2 (registers), CLIP, PiT, CrossViT; EVA; BEiT; relative-position ViTs
    "timm.models.vision_transformer.Block": None,
    "timm.models.vision_transformer.ResPostBlock": None,
    "timm.models.vision_transformer.ParallelScalingBlock": None,
    "timm.models.vision_transformer.ParallelThingsBlock": None,
    "timm.models.eva.EvaBlock": None,
    "timm.models.eva.EvaBlockPostNorm": None,
    "timm.models.beit.Block": None,
    "timm.models.vision_transformer_relpos.RelPosBlock": None,
    "timm.models.vision_transformer_relpos.ResPostRelPosBlock": None,
    # ConViT (inside a ConVit, its blocks before the class token joins hold patch tokens alone:
    # ``_TIMM_MODEL_BLOCKS``), Gemma 4's and DeepSeek's vision encoders
    "timm.models.convit.Block": None,
    "timm.models.gemma4_vit.Gemma4Block": None,
    "timm.models.deepseek_vit.DeepseekVitBlock": None,
    # (N, H*W, C) patch tokens alone: CaiT's and XCiT's patch blocks (their class-attention
    # blocks, which update the class token alone, are left out), Twins, PVT v2, LeViT, the
    # attention stage of EfficientFormer, MLP-Mixer, ResMLP, gMLP
    "timm.models.cait.LayerScaleBlock": _PATCHES,
    "timm.models.xcit.XCABlock": _PATCHES,
    "timm.models.twins.Block": _PATCHES,
    "timm.models.pvt_v2.Block": _PATCHES,
    "timm.models.levit.LevitBlock": _PATCHES,
    "timm.models.efficientformer.MetaBlock1d": _PATCHES,
    "timm.models.mlp_mixer.MixerBlock": _PATCHES,
    "timm.models.mlp_mixer.ResBlock": _PATCHES,
    "timm.models.mlp_mixer.SpatialGatingBlock": _PATCHES,
    # (N, H, W, C): Swin v1/v2 and v2-CR, GCViT, TinyViT, SAM's ViT, SAM 2's HieraDet, VOLO's
    # outlooker and transformer blocks (its class-attention blocks, which update the class token
    # alone, are left out)
    "timm.models.swin_transformer.SwinTransformerBlock": channels_last_to_grid,
    "timm.models.swin_transformer_v2.SwinTransformerV2Block": channels_last_to_grid,
    "timm.models.swin_transformer_v2_cr.SwinTransformerV2CrBlock": channels_last_to_grid,
    "timm.models.gcvit.GlobalContextVitBlock": channels_last_to_grid,
    "timm.models.tiny_vit.TinyVitBlock": channels_last_to_grid,
    "timm.models.vision_transformer_sam.Block": channels_last_to_grid,
    "timm.models.hieradet_sam2.MultiScaleBlock": channels_last_to_grid,
    "timm.models.volo.Outlooker": channels_last_to_grid,
    "timm.models.volo.Transformer": channels_last_to_grid,
    # (N, T, S, C) blocks of tokens: NesT
    "timm.models.nest.TransformerLayer": blocks_of_blocks_to_grid,
    # tuples: TNT's (pixel tokens, patch tokens), its patch tokens led by the class token;
    # MViTv2's (tokens, grid size), on the grid its pooling attention left (a first block of a
    # stage pools inside; its output is on the pooled grid it returns)
    "timm.models.tnt.Block": TupleOutput(item=1),
    "timm.models.mvitv2.MultiScaleBlock": TupleOutput(item=0, grid_item=1),
    # (N, C, H, W): MaxViT, CoAtNet, DaViT, TinyViT's, EfficientFormer's and ViTamin's
    # convolutional stages, EfficientFormerV2, EdgeNeXt, MobileViT (v1, v2: its transformer is
    # inside), Visformer
    "timm.models.maxxvit.MaxxVitBlock": _identity,
    "timm.models.maxxvit.ParallelMaxxVitBlock": _identity,
    "timm.models.maxxvit.MbConvBlock": _identity,
    "timm.models.maxxvit.TransformerBlock2d": _identity,
    "timm.models.davit.SpatialBlock": _identity,
    "timm.models.davit.ChannelBlock": _identity,
    "timm.models.tiny_vit.MBConv": _identity,
    "timm.models.vitamin.MbConvLNBlock": _identity,
    "timm.models.efficientformer.MetaBlock2d": _identity,
    "timm.models.efficientformer_v2.EfficientFormerV2Block": _identity,
    "timm.models.edgenext.ConvBlock": _identity,
    "timm.models.edgenext.SplitTransposeBlock": _identity,
    "timm.models.mobilevit.MobileVitBlock": _identity,
    "timm.models.mobilevit.MobileVitV2Block": _identity,
    "timm.models.visformer.Block": _identity,
    # (N, C, H, W): convolutional networks with attention inside some of their blocks, every
    # block of their stages: CPUBone, LowFormer (their residual blocks, in the stem too, and the
    # attention blocks built of them), SHViT, iFormer, CSATv2, MobileNetV4's hybrids and
    # MobileNetV5 (their convolutional blocks alongside MobileAttention, below)
    "timm.models.cpubone.ResidualBlock": _identity,
    "timm.models.cpubone.CPUBoneBlock": _identity,
    "timm.models.lowformer.ResidualBlock": _identity,
    "timm.models.lowformer.LowFormerBlock": _identity,
    "timm.models.shvit.BasicBlock": _identity,
    "timm.models.iformer.ConvBlock": _identity,
    "timm.models.iformer.RepCPE": _identity,
    "timm.models.iformer.SHMABlock": _identity,
    "timm.models.iformer.FFN": _identity,
    "timm.models.csatv2.Block": _identity,
    "timm.models.csatv2.TransformerBlock": _identity,
    "timm.models._efficientnet_blocks.MobileAttention": _identity,
}

_MOBILE_ATTENTION = ("timm.models._efficientnet_blocks.MobileAttention",)

#: timm blocks that are stages only beside others: MobileViT's convolutional blocks (byobnet's,
#: shared with CNNs such as RepVGG) in a model that has MobileViT blocks; the convolutional
#: blocks of MobileNetV4's hybrids and MobileNetV5 (EfficientNet's, shared with the
#: convolutional MobileNets, whose stages are their convolutions) in a model that has
#: MobileAttention blocks.
_TIMM_ALONGSIDE: dict[str, tuple[str, ...]] = {
    "timm.models.byobnet.BottleneckBlock": (
        "timm.models.mobilevit.MobileVitBlock",
        "timm.models.mobilevit.MobileVitV2Block",
    ),
    **{
        f"timm.models._efficientnet_blocks.{block}": _MOBILE_ATTENTION
        for block in (
            "ConvBnAct",
            "DepthwiseSeparableConv",
            "EdgeResidual",
            "InvertedResidual",
            "UniversalInvertedResidual",
        )
    },
}

#: How many extra tokens a model says lead its blocks' tokens: a number fixed by the model's code,
#: the dotted path of an attribute that holds it, or a tuple of these, summed.
_Count = int | str | tuple[int | str, ...]

#: timm models that say their number of leading extra tokens otherwise than ``num_prefix_tokens``.
_TIMM_PREFIX: dict[str, _Count] = {
    "timm.models.pit.PoolingVisionTransformer": "num_tokens",  # 2 when distilled
    "timm.models.crossvit.CrossVit": 1,  # one class token per branch
}

#: timm models whose patch grid is fixed when they are built, and the attribute that says it. Their
#: token blocks' reshapes take that grid: TNT (which refuses images of another size) embeds its
#: pixels with a convolution on each patch, so the last convolution's grid, which `PatchTokens`
#: would read otherwise, is the pixel grid inside a patch.
_TIMM_GRID: dict[str, str] = {
    "timm.models.tnt.TNT": "pixel_embed.grid_size",
}


def _unrolled(strides: object, size: object) -> UnrolledTokens | None:
    """The `UnrolledTokens` of Hiera tokens on a grid of ``size`` with ``strides`` left to undo.

    ``None`` for a size that is no 2-D grid (a 3-D, video, Hiera) or strides that are no pairs.
    """
    grid = _grid_pair(size) if len(size) == 2 else None  # type: ignore[arg-type]
    pairs = tuple(_grid_pair(stride) for stride in strides)  # type: ignore[attr-defined]
    if grid is None or any(pair is None for pair in pairs):
        return None
    return UnrolledTokens(pairs, grid)  # type: ignore[arg-type]


def _hiera_blocks(model: nn.Module) -> dict[int, BlockReshape]:
    """The blocks of a timm ``Hiera`` by ``id``, each with the `UnrolledTokens` of its output.

    For its block ``i``, Hiera's ``reroll.schedule[i]`` holds the unroll strides its pooling has
    not consumed yet and the grid of its tokens; `UnrolledTokens` undoes that order (timm's
    ``Reroll`` is not used). The blocks of a 3-D (video) Hiera, whose tokens make no 2-D grid,
    are left out.
    """
    schedule = getattr(getattr(model, "reroll", None), "schedule", None)
    blocks = getattr(model, "blocks", None)
    if not isinstance(schedule, Mapping) or not isinstance(blocks, nn.ModuleList):
        return {}
    found: dict[int, BlockReshape] = {}
    for index, block in enumerate(blocks):
        unrolled = _unrolled(*schedule.get(index, ((), ())))
        if unrolled is not None:
            found[id(block)] = unrolled
    return found


def _convit_blocks(model: nn.Module) -> dict[int, BlockReshape]:
    """The blocks of a timm ``ConVit`` by ``id``, each with the tokens its output holds.

    ConViT puts its class token before the patch tokens only after its first
    ``local_up_to_layer`` blocks (its gated positional attention ones), so those hold the patch
    tokens alone and the others are led by the class token (none where the model has none).
    """
    blocks, local = getattr(model, "blocks", None), getattr(model, "local_up_to_layer", None)
    if not isinstance(blocks, nn.ModuleList) or not isinstance(local, int):
        return {}
    joined = 0 if getattr(model, "cls_token", None) is None else 1
    return {id(block): PatchTokens(0 if i < local else joined) for i, block in enumerate(blocks)}


def _metaformer_blocks(model: nn.Module) -> dict[int, BlockReshape]:
    """The blocks of a timm ``MetaFormer`` with attention stages (CAFormer) by ``id``.

    A stage whose token mixer is attention runs its blocks on (N, H*W, C) patch tokens (its
    ``use_nchw`` is false), the others on (N, C, H, W) maps; all its blocks are stages, as
    EfficientFormer's. A MetaFormer without attention (PoolFormer, ConvFormer) has none: its
    convolutional stages are found.
    """
    stages = getattr(model, "stages", None)
    if not isinstance(stages, nn.Sequential):
        return {}
    modes = [getattr(stage, "use_nchw", None) for stage in stages]
    if False not in modes or None in modes:
        return {}
    return {
        id(block): _identity if stage.use_nchw else _PATCHES
        for stage in stages
        for block in getattr(stage, "blocks", ())
    }


#: timm models whose blocks' reshapes only the model says, by block (``id``): Hiera's blocks
#: hold their tokens in mask-unit order, ConViT's class token joins after its first blocks, and
#: MetaFormer's blocks hold maps or tokens by stage (and are stages only beside attention).
_TIMM_MODEL_BLOCKS: dict[str, Callable[[nn.Module], dict[int, BlockReshape]]] = {
    "timm.models.hiera.Hiera": _hiera_blocks,
    "timm.models.convit.ConVit": _convit_blocks,
    "timm.models.metaformer.MetaFormer": _metaformer_blocks,
}

#: timm blocks that cannot be found soundly, and why; named when Integrative CAM refuses.
TIMM_REFUSED: dict[str, str] = {
    "timm.models.hiera.HieraBlock": (
        "Hiera's blocks hold their tokens in mask-unit order, which only a 2-D timm Hiera "
        "around them says (its reroll schedule): outside one their grid is unknown (pass their "
        "order as ctc_plugin.cam.UnrolledTokens(strides, grid))"
    ),
}

_HF = "transformers.models"
_HIERA_LAYER = f"{_HF}.hiera.modeling_hiera.HieraLayer"
_SWIN_LAYER = TupleOutput(0, _PATCHES, grid_arguments=("input_dimensions",))
_REDUCTION_LAYER = TupleOutput(0, _PATCHES, grid_arguments=("height", "width"))

#: Hugging Face ``transformers``' block classes (``module.qualname``, matched exactly, so
#: transformers is never imported here) and the reshape of their outputs, read as in
#: ``TIMM_BLOCKS``: ``None`` (alone, or as a `TupleOutput`'s reshape) is (N, T, D) tokens led by
#: as many extra tokens as the model around them says (``_HUGGINGFACE_PREFIX``), on the patch
#: embedding's grid. A layer that returns a tuple (its hidden states first, then what
#: ``output_attentions`` adds) is read by a `TupleOutput`; as of transformers 4.57.
HUGGINGFACE_BLOCKS: dict[str, BlockReshape | None] = {
    # ViT, DeiT, DINOv2 (with registers), I-JEPA, ViT MSN, SigLIP (2): tokens
    f"{_HF}.vit.modeling_vit.ViTLayer": None,
    f"{_HF}.deit.modeling_deit.DeiTLayer": None,
    f"{_HF}.dinov2.modeling_dinov2.Dinov2Layer": None,
    f"{_HF}.dinov2_with_registers.modeling_dinov2_with_registers.Dinov2WithRegistersLayer": None,
    f"{_HF}.ijepa.modeling_ijepa.IJepaLayer": None,
    f"{_HF}.vit_msn.modeling_vit_msn.ViTMSNLayer": None,
    f"{_HF}.siglip.modeling_siglip.SiglipEncoderLayer": None,
    f"{_HF}.siglip2.modeling_siglip2.Siglip2EncoderLayer": None,
    # BEiT, Data2Vec vision, CLIP, MetaCLIP 2: (tokens, ...)
    f"{_HF}.beit.modeling_beit.BeitLayer": TupleOutput(0),
    f"{_HF}.data2vec.modeling_data2vec_vision.Data2VecVisionLayer": TupleOutput(0),
    f"{_HF}.clip.modeling_clip.CLIPEncoderLayer": TupleOutput(0),
    f"{_HF}.metaclip_2.modeling_metaclip_2.MetaClip2EncoderLayer": TupleOutput(0),
    # (tokens,) on the grid the layer is called with: Swin v1/v2 and Donut's Swin
    # (input_dimensions); PVT (height, width; its last stage's tokens are led by a class token,
    # PvtPatchEmbeddings.cls_token, the one token that does not fit that grid)
    f"{_HF}.swin.modeling_swin.SwinLayer": _SWIN_LAYER,
    f"{_HF}.swinv2.modeling_swinv2.Swinv2Layer": _SWIN_LAYER,
    f"{_HF}.donut.modeling_donut_swin.DonutSwinLayer": _SWIN_LAYER,
    f"{_HF}.pvt.modeling_pvt.PvtLayer": TupleOutput(
        0, tokens_to_grid, grid_arguments=("height", "width")
    ),
    # (tokens, ...) on the grid the layer is called with (height, width): PVT v2, SegFormer
    f"{_HF}.pvt_v2.modeling_pvt_v2.PvtV2BlockLayer": _REDUCTION_LAYER,
    f"{_HF}.segformer.modeling_segformer.SegformerLayer": _REDUCTION_LAYER,
    # (N, H*W, C) patch tokens alone: LeViT's residual layers (attention or MLP), EfficientFormer's
    # attention blocks ((tokens, ...), after its last pooling block's grid)
    f"{_HF}.levit.modeling_levit.LevitResidualLayer": _PATCHES,
    f"{_HF}.deprecated.efficientformer.modeling_efficientformer.EfficientFormerMeta3D": (
        TupleOutput(0, _PATCHES)
    ),
    # (N, C, H, W): EfficientFormer's pooling blocks; MobileViT v1/v2 blocks (their transformers,
    # on unfolded patches, inside) and their inverted residual blocks
    f"{_HF}.deprecated.efficientformer.modeling_efficientformer.EfficientFormerMeta4D": _identity,
    f"{_HF}.mobilevit.modeling_mobilevit.MobileViTLayer": _identity,
    f"{_HF}.mobilevit.modeling_mobilevit.MobileViTInvertedResidual": _identity,
    f"{_HF}.mobilevitv2.modeling_mobilevitv2.MobileViTV2Layer": _identity,
    f"{_HF}.mobilevitv2.modeling_mobilevitv2.MobileViTV2InvertedResidual": _identity,
}

#: Hugging Face models and how many extra tokens lead their blocks' tokens: a class token put
#: before the patches by their embeddings' code (DeiT's also a distillation token), DINOv2's
#: registers as many as its config says.
_HUGGINGFACE_PREFIX: dict[str, _Count] = {
    f"{_HF}.vit.modeling_vit.ViTModel": 1,
    f"{_HF}.deit.modeling_deit.DeiTModel": 2,
    f"{_HF}.beit.modeling_beit.BeitModel": 1,
    f"{_HF}.data2vec.modeling_data2vec_vision.Data2VecVisionModel": 1,
    f"{_HF}.dinov2.modeling_dinov2.Dinov2Model": 1,
    f"{_HF}.dinov2_with_registers.modeling_dinov2_with_registers.Dinov2WithRegistersModel": (
        1,
        "config.num_register_tokens",
    ),
    f"{_HF}.ijepa.modeling_ijepa.IJepaModel": 0,
    f"{_HF}.vit_msn.modeling_vit_msn.ViTMSNModel": 1,
    f"{_HF}.clip.modeling_clip.CLIPVisionTransformer": 1,
    f"{_HF}.metaclip_2.modeling_metaclip_2.MetaClip2VisionTransformer": 1,
    f"{_HF}.siglip.modeling_siglip.SiglipVisionTransformer": 0,
    f"{_HF}.siglip2.modeling_siglip2.Siglip2VisionTransformer": 0,
}

#: Patch embeddings that take the patch grid as a call argument (by qualified class name, as
#: ``HUGGINGFACE_BLOCKS``): the argument's name. SigLIP 2's embeddings take images cut into a
#: linear sequence of patches (no convolution shows their grid) with ``spatial_shapes``, each
#: image's (rows, columns).
PATCH_GRID_ARGUMENTS: dict[str, str] = {
    f"{_HF}.siglip2.modeling_siglip2.Siglip2VisionEmbeddings": "spatial_shapes",
}

#: Patch embeddings that return the patch grid beside the tokens (by qualified class name): the
#: index of the (rows, columns) in their output tuple. timm's NaFlexViT embeds with a linear
#: layer by default (it cuts the image into patches itself, so no convolution shows the grid).
PATCH_GRID_OUTPUTS: dict[str, int] = {
    "timm.models.naflexvit.NaFlexEmbeds": 1,
}

#: Hugging Face modules whose blocks hold no image tokens: the text transformers of CLIP,
#: MetaCLIP 2, SigLIP and SigLIP 2 (their layers are the vision transformers' classes), not
#: searched.
_HUGGINGFACE_NOT_IMAGES = frozenset(
    {
        f"{_HF}.clip.modeling_clip.CLIPTextTransformer",
        f"{_HF}.metaclip_2.modeling_metaclip_2.MetaClip2TextTransformer",
        f"{_HF}.siglip.modeling_siglip.SiglipTextTransformer",
        f"{_HF}.siglip2.modeling_siglip2.Siglip2TextTransformer",
    }
)


def _huggingface_hiera_blocks(encoder: nn.Module) -> dict[int, BlockReshape]:
    """The layers of a Hugging Face ``HieraEncoder`` by ``id``, reading their tokens' order.

    A layer returns (tokens, attention). Every layer of stage ``i`` outputs tokens in the order
    ``schedule[i]`` says (the unroll strides left, the grid; the first layer of a stage pools);
    `UnrolledTokens` undoes it. The layers of a 3-D (video) Hiera are left out.
    """
    schedule = getattr(encoder, "schedule", None)
    stages = getattr(encoder, "stages", None)
    if not isinstance(schedule, Mapping) or not isinstance(stages, nn.ModuleList):
        return {}
    found: dict[int, BlockReshape] = {}
    for index, stage in enumerate(stages):
        unrolled = _unrolled(*schedule.get(index, ((), ())))
        layers = getattr(stage, "layers", None)
        if unrolled is not None and isinstance(layers, nn.ModuleList):
            found.update((id(layer), TupleOutput(0, unrolled)) for layer in layers)
    return found


#: Hugging Face models whose blocks' token order only the model says (see ``_TIMM_MODEL_BLOCKS``).
_HUGGINGFACE_MODEL_BLOCKS: dict[str, Callable[[nn.Module], dict[int, BlockReshape]]] = {
    f"{_HF}.hiera.modeling_hiera.HieraEncoder": _huggingface_hiera_blocks,
}

#: Hugging Face blocks that cannot be found soundly, and why; named when Integrative CAM refuses.
HUGGINGFACE_REFUSED: dict[str, str] = {
    f"{_HF}.perceiver.modeling_perceiver.PerceiverLayer": (
        "Perceiver's layers hold a latent array (learned queries that read the image by "
        "cross-attention), not image tokens on a patch grid: they make no map of the image to "
        "fuse; CTC scores image regions of it"
    ),
    _HIERA_LAYER: (
        "Hugging Face Hiera's layers hold their tokens in mask-unit order, which only the 2-D "
        "HieraEncoder around them says (its schedule): outside one their grid is unknown (pass "
        "layers=[...] and reshape_transform=ctc_plugin.cam.TupleOutput(0, "
        "UnrolledTokens(strides, grid)))"
    ),
}

#: Hugging Face classifiers whose head reads the leading tokens alone (the class token; DeiT's
#: teacher head also the distillation token): their last layer's patch tokens reach no score.
#: (BEiT's and Data2Vec vision's read the class token alone without mean pooling, but their
#: layers return tuples, whose first LayerNorm `grad_cam_layer` takes anyway.)
_HUGGINGFACE_TOKEN_HEADS = frozenset(
    {
        f"{_HF}.vit.modeling_vit.ViTForImageClassification",
        f"{_HF}.deit.modeling_deit.DeiTForImageClassification",
        f"{_HF}.deit.modeling_deit.DeiTForImageClassificationWithTeacher",
        f"{_HF}.vit_msn.modeling_vit_msn.ViTMSNForImageClassification",
    }
)

#: The attribute names of a ViT block's first LayerNorm (the one before its attention):
#: torchvision's, timm's, Hugging Face's (ViT, DeiT, BEiT, ...; CLIP, SigLIP).
_FIRST_NORMS = ("ln_1", "norm1", "layernorm_before", "layer_norm1")


@dataclass(frozen=True)
class _Library:
    """The tables of a library whose classes are matched by qualified name (never imported).

    Attributes:
        package: The library's top-level package; without it in ``sys.modules``, no class of it
            can be in a model, and its tables are skipped.
        blocks: Its block classes and their reshapes (``None``: tokens led by extra tokens).
        refused: Its block classes that cannot be found soundly, and why.
        prefix: Models that say how many extra tokens lead their blocks' tokens.
        grid: Models whose patch grid is fixed, and the attribute that says it.
        model_blocks: Models whose blocks' reshapes only they say, by block ``id``.
        alongside: Blocks that are stages only beside blocks of the other classes named.
        not_images: Modules whose blocks hold no image tokens, not searched.
    """

    package: str
    blocks: Mapping[str, BlockReshape | None]
    refused: Mapping[str, str]
    prefix: Mapping[str, _Count]
    grid: Mapping[str, str] = field(default_factory=dict)
    model_blocks: Mapping[str, Callable[[nn.Module], dict[int, BlockReshape]]] = field(
        default_factory=dict
    )
    alongside: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    not_images: frozenset[str] = frozenset()


_LIBRARIES = (
    _Library(
        "timm",
        TIMM_BLOCKS,
        TIMM_REFUSED,
        _TIMM_PREFIX,
        _TIMM_GRID,
        _TIMM_MODEL_BLOCKS,
        _TIMM_ALONGSIDE,
    ),
    _Library(
        "transformers",
        HUGGINGFACE_BLOCKS,
        HUGGINGFACE_REFUSED,
        _HUGGINGFACE_PREFIX,
        model_blocks=_HUGGINGFACE_MODEL_BLOCKS,
        not_images=_HUGGINGFACE_NOT_IMAGES,
    ),
)


__all__ = [
    "BLOCK_RESHAPES",
    "HUGGINGFACE_BLOCKS",
    "HUGGINGFACE_REFUSED",
    "PATCH_GRID_ARGUMENTS",
    "PATCH_GRID_OUTPUTS",
    "TIMM_BLOCKS",
    "TIMM_REFUSED",
]
