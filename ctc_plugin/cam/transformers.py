"""The stages of a vision transformer: its blocks' token maps, reshaped to the patch grid.

A vision transformer has one convolution (its patch embedding); its feature maps are the token
maps its blocks output, each turned into an (N, C, H, W) map by a reshape of
[`reshapes`][ctc_plugin.cam.reshapes] that the tables of
[`known_blocks`][ctc_plugin.cam.known_blocks] name for its block. Those two modules are the
home of their names (the documented ones are importable from ``ctc_plugin.cam``); this module's
``__all__`` lists only its own.

[`transformer_stages`][ctc_plugin.cam.transformer_stages] finds the blocks of torchvision's ViT,
Swin (v1 and v2) and MaxViT, of the zoo's ViT, of the timm families in ``TIMM_BLOCKS`` and the
Hugging Face ``transformers`` families in ``HUGGINGFACE_BLOCKS`` (both matched by qualified class
name: neither library is ever imported here), of timm's and Hugging Face's Hiera (whose blocks'
token order only the model says) and of any model whose blocks are of a type registered in
[`BLOCK_RESHAPES`][ctc_plugin.cam.BLOCK_RESHAPES]. How many extra tokens lead a ViT's tokens is
read from the model (timm's ``num_prefix_tokens``; for Hugging Face's, the tokens their embeddings
put first and ``config.num_register_tokens``), never guessed from the token count. Blocks that
cannot be found soundly (a Hiera block outside its Hiera) are named with the reason, in
``TIMM_REFUSED`` and ``HUGGINGFACE_REFUSED``, when Integrative CAM refuses the model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.hooks import RemovableHandle

from ctc_plugin.cam.known_blocks import (
    _FIRST_NORMS,
    _HUGGINGFACE_TOKEN_HEADS,
    _LIBRARIES,
    BLOCK_RESHAPES,
    PATCH_GRID_ARGUMENTS,
    PATCH_GRID_OUTPUTS,
    _Count,
    _known_blocks,
)
from ctc_plugin.cam.layers import computes_attention
from ctc_plugin.cam.reshapes import (
    BlockReshape,
    PatchTokens,
    Reshape,
    TupleOutput,
    _grid_pair,
    _identity,
    call_arguments,
    check_square_grid,
    reads_patch_grid,
    tokens_to_grid,
)
from ctc_plugin.concurrency import CallScope, eval_mode
from ctc_plugin.module_paths import module_path
from ctc_plugin.module_state import compiled_code_eager
from ctc_plugin.wording import counted


class UnknownBlocksError(ValueError):
    """The model computes attention in blocks of no type this package knows: name the layers.

    Raised by `IntegrativeCAM` (give ``layers=``) and by
    [`last_spatial_layer`][ctc_plugin.cam.last_spatial_layer] (give pytorch-grad-cam the layer),
    or register the block type in [`BLOCK_RESHAPES`][ctc_plugin.cam.BLOCK_RESHAPES].
    """


class NoSpatialMapError(ValueError):
    """No submodule of the model returns an (N, C, H, W) map with more than one position.

    Raised by [`last_spatial_layer`][ctc_plugin.cam.last_spatial_layer]: Grad-CAM has no map to
    weight (a model of linear layers over tokens, say); Integrative CAM with ``layers=``, or a
    perturbation method (Captum's FeatureAblation, Lime, or CTC), explains such a model.
    """


def _qualified(module: nn.Module) -> str:
    kind = type(module)
    return f"{kind.__module__}.{kind.__qualname__}"


def patch_grid_arguments(model: object) -> list[tuple[nn.Module, str]]:
    """The modules of ``model`` whose calls say the patch grid, with that argument's name.

    Patch embeddings listed in ``PATCH_GRID_ARGUMENTS`` (SigLIP 2's ``spatial_shapes``); none
    for anything but a module (a plain function's modules are unknown).
    """
    if not isinstance(model, nn.Module):
        return []
    return [
        (module, PATCH_GRID_ARGUMENTS[_qualified(module)])
        for module in model.modules()
        if _qualified(module) in PATCH_GRID_ARGUMENTS
    ]


def patch_grid_outputs(model: object) -> list[tuple[nn.Module, int]]:
    """The modules of ``model`` that return the patch grid, with its index in their output.

    Patch embeddings listed in ``PATCH_GRID_OUTPUTS`` (timm's NaFlexViT's); none for anything
    but a module.
    """
    if not isinstance(model, nn.Module):
        return []
    return [
        (module, PATCH_GRID_OUTPUTS[_qualified(module)])
        for module in model.modules()
        if _qualified(module) in PATCH_GRID_OUTPUTS
    ]


@dataclass(frozen=True)
class _Tables:
    """The tables of the libraries imported, merged, for one search of a model's blocks."""

    blocks: Mapping[str, BlockReshape | None] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)
    prefix: Mapping[str, _Count] = field(default_factory=dict)
    grid: Mapping[str, str] = field(default_factory=dict)
    model_blocks: Mapping[str, Callable[[nn.Module], dict[int, BlockReshape]]] = field(
        default_factory=dict
    )
    not_images: frozenset[str] = frozenset()


def _tables(model: nn.Module) -> _Tables:
    """The tables of the libraries imported, with the blocks found alongside others in ``model``.

    Empty without timm and transformers: no class of theirs can be in the model.
    """
    libraries = [library for library in _LIBRARIES if library.package in sys.modules]
    if not libraries:
        return _Tables()
    present = {_qualified(m) for m in model.modules()}
    blocks: dict[str, BlockReshape | None] = {}
    for library in libraries:
        blocks.update(library.blocks)
        blocks.update(
            (name, _identity)
            for name, others in library.alongside.items()
            if name in present and present.intersection(others)
        )
    return _Tables(
        blocks=blocks,
        refused={k: v for lib in libraries for k, v in lib.refused.items()},
        prefix={k: v for lib in libraries for k, v in lib.prefix.items()},
        grid={k: v for lib in libraries for k, v in lib.grid.items()},
        model_blocks={k: v for lib in libraries for k, v in lib.model_blocks.items()},
        not_images=frozenset().union(*(lib.not_images for lib in libraries)),
    )


def _attribute(module: nn.Module, path: str) -> object:
    """The attribute at the dotted ``path`` of ``module``, ``None`` where there is none."""
    value: object = module
    for name in path.split("."):
        value = getattr(value, name, None)
    return value


def _count(module: nn.Module, count: _Count) -> int | None:
    """The number ``count`` says for ``module`` (`_Count`), ``None`` where a part is no count."""
    total = 0
    for part in count if isinstance(count, tuple) else (count,):
        value = part if isinstance(part, int) else _attribute(module, part)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return None
        total += value
    return total


def _prefix_tokens(module: nn.Module, inherited: int | None, tables: _Tables) -> int | None:
    """The number of leading extra tokens ``module`` says its blocks hold, else ``inherited``."""
    said = _count(module, tables.prefix.get(_qualified(module), "num_prefix_tokens"))
    return inherited if said is None else said


@dataclass(frozen=True)
class _Said:
    """What the modules around a block say about its tokens.

    Attributes:
        prefix: The number of leading extra tokens (``num_prefix_tokens``, the prefix tables),
            if said.
        grid: The patch grid (``_TIMM_GRID``), if said.
        blocks: The reshape of each block (by ``id``) whose token order a model says
            (``_TIMM_MODEL_BLOCKS``, ``_HUGGINGFACE_MODEL_BLOCKS``).
    """

    prefix: int | None = None
    grid: tuple[int, int] | None = None
    blocks: Mapping[int, BlockReshape] = field(default_factory=dict)


def _said_by(module: nn.Module, said: _Said, tables: _Tables) -> _Said:
    """``said``, with what ``module`` says about the tokens of the blocks inside it."""
    name = _qualified(module)
    grid = said.grid
    if name in tables.grid:
        grid = _grid_pair(_attribute(module, tables.grid[name])) or grid
    blocks = said.blocks
    if name in tables.model_blocks:
        blocks = {**blocks, **tables.model_blocks[name](module)}
    return _Said(_prefix_tokens(module, said.prefix, tables), grid, blocks)


def _resolved(reshape: BlockReshape | None, said: _Said) -> BlockReshape:
    """A table entry with ``None`` (tokens led by the model's extra tokens) filled in."""
    if isinstance(reshape, TupleOutput):
        if reshape.reshape is not None:
            return reshape
        return replace(reshape, reshape=_resolved(None, said))
    if reshape is not None:
        return reshape
    if said.prefix is not None:
        return PatchTokens(said.prefix, said.grid)
    return tokens_to_grid if said.grid is None else partial(tokens_to_grid, grid=said.grid)


def _found_blocks(
    module: nn.Module,
    known: dict[type[nn.Module], BlockReshape],
    tables: _Tables,
    said: _Said,
    seen: set[int],
    encoder_layers: bool = False,
) -> Iterator[tuple[nn.Module, BlockReshape]]:
    """The known blocks in ``module`` in module order; a found block is not searched further.

    ``encoder_layers``: PyTorch's ``nn.TransformerEncoderLayer`` (batch first) is a block too.
    """
    if id(module) in seen:
        return
    seen.add(id(module))
    kind = type(module)
    if kind in known:
        yield module, known[kind]
        return
    if (
        encoder_layers
        and isinstance(module, nn.TransformerEncoderLayer)
        and module.self_attn.batch_first
    ):
        yield module, _resolved(None, said)  # PyTorch's own block: (N, T, D) tokens
        return
    if id(module) in said.blocks:
        yield module, said.blocks[id(module)]
        return
    name = _qualified(module)
    if name in tables.blocks:
        yield module, _resolved(tables.blocks[name], said)
        return
    if name in tables.not_images:
        return
    said = _said_by(module, said, tables)
    for child in module.children():
        yield from _found_blocks(child, known, tables, said, seen, encoder_layers)


def transformer_stages(model: nn.Module) -> list[tuple[nn.Module, BlockReshape]]:
    """The transformer blocks of ``model``, in module order, each with its output's reshape.

    The known blocks: PyTorch's ``nn.TransformerEncoderLayer`` with ``batch_first=True`` (the
    block of ViTs written by hand; sequence-first layers are not found, nor layers in a model
    with convolutions other than one patch embedding and depthwise position convolutions: a
    CNN's transformer head), torchvision's ViT
    ``EncoderBlock``, Swin
    ``SwinTransformerBlock``/``SwinTransformerBlockV2``, MaxViT ``MaxVitLayer``, the types in
    [`BLOCK_RESHAPES`][ctc_plugin.cam.BLOCK_RESHAPES] (these first), timm's in ``TIMM_BLOCKS``:
    ViT and its variants (DeiT, DINOv2 with registers, CLIP, EVA, BEiT, PiT, CrossViT, hybrids,
    relative positions, NaFlexViT, Qwen3's, Gemma 4's, DeepSeek's), ConViT (its class token
    joins after its first blocks), CaiT, XCiT, Twins, PVT v2, Swin v1/v2/v2-CR, SAM's ViT, SAM
    2's HieraDet, VOLO, NesT, DaViT, GCViT, MaxViT, CoAtNet, ViTamin, TinyViT, LeViT,
    EfficientFormer v1/v2, CAFormer (MetaFormer's blocks beside attention), EdgeNeXt, MobileViT
    v1/v2, Visformer, MLP-Mixer, ResMLP, gMLP, TNT
    (its patch tokens, picked out of the (pixel tokens, patch tokens) tuple its blocks return,
    on the patch grid the model says) and MViTv2 (the tokens of its blocks' (tokens, grid)
    tuples, on that grid), and every block of the stages of its convolutional networks with
    attention in some blocks (CPUBone, LowFormer, SHViT, iFormer, CSATv2, MobileNetV4's hybrids,
    MobileNetV5); the blocks of timm's 2-D Hiera, their tokens put back from mask-unit
    order (`UnrolledTokens`); and Hugging Face's in ``HUGGINGFACE_BLOCKS``: ViT, DeiT, BEiT,
    Data2Vec vision, DINOv2 (with registers), I-JEPA, ViT MSN, CLIP, MetaCLIP 2 and SigLIP (their
    vision transformers), Swin v1/v2 and Donut's Swin, PVT (these two on the grid each layer is
    called with), LeViT, EfficientFormer, MobileViT v1/v2, and the layers of a 2-D Hiera
    (unrolled tokens, as timm's). A block inside a found block is not a stage of its own
    (MobileViT's transformer blocks, inside its MobileViT blocks). The leading extra tokens of
    ViT blocks are as many as the model says (timm's ``num_prefix_tokens``; for Hugging Face's,
    the class and distillation tokens their embeddings add, and ``config.num_register_tokens``).
    Empty for a model without known blocks.
    """
    known = {**_known_blocks(), **BLOCK_RESHAPES}
    found = _found_blocks(model, known, _tables(model), _Said(), set(), _patches_only(model))
    return list(found)


def _patches_only(model: nn.Module) -> bool:
    """Whether ``model``'s convolutions are one patch embedding and position convolutions only.

    Then PyTorch's ``nn.TransformerEncoderLayer`` are its blocks (a ViT written by hand). A
    patch embedding cuts the image into patches (kernel and stride equal, larger than 1); a
    position convolution (CPVT's PEG) is depthwise. Over a CNN's maps (convolutions of any
    other kind, or several that patchify and downsample, as ConvNeXt's stem and downsampling
    layers do) the layers are its head (DETR, Query2Label), not its stages.
    """
    embeddings = 0
    for module in model.modules():
        if not isinstance(module, nn.modules.conv._ConvNd):
            continue
        patches = module.kernel_size == module.stride and max(module.kernel_size) > 1
        depthwise = module.groups == module.in_channels == module.out_channels > 1
        if not (patches or depthwise):
            return False
        embeddings += patches and not depthwise
    return embeddings <= 1  # a CNN that patchifies and downsamples so (ConvNeXt) has several


def refused_blocks(model: object) -> list[str]:
    """Why the blocks of ``model`` that cannot be found soundly are not.

    The reasons of ``TIMM_REFUSED`` and ``HUGGINGFACE_REFUSED``; only blocks that were not found
    count (a HieraBlock inside a timm Hiera is found). Empty for a plain function (no modules to
    read) and without timm and transformers.
    """
    if not isinstance(model, nn.Module):
        return []
    refused = _tables(model).refused
    if not refused:
        return []
    found = {id(block) for block, _ in transformer_stages(model)}
    reasons = {refused.get(_qualified(m)) for m in model.modules() if id(m) not in found}
    return sorted(reason for reason in reasons if reason is not None)


def _reads_leading_tokens_alone(head: nn.Module) -> bool | None:
    """Whether ``head``'s classifier reads its leading tokens alone; ``None``: ``head`` says not.

    timm's ViTs with ``global_pool="token"`` read the class token only; so do the Hugging Face
    classifiers in ``_HUGGINGFACE_TOKEN_HEADS``.
    """
    pool = getattr(head, "global_pool", None)
    if isinstance(pool, str):
        return pool == "token"
    return True if _qualified(head) in _HUGGINGFACE_TOKEN_HEADS else None


def _classifies_prefix_tokens(model: nn.Module, block: nn.Module) -> bool:
    """Whether the innermost classifier around ``block`` reads its leading tokens alone.

    Then the patch tokens ``block`` outputs reach no score (see `_reads_leading_tokens_alone`).
    """
    said = [
        reads
        for m in model.modules()
        if (reads := _reads_leading_tokens_alone(m)) is not None
        and any(b is block for b in m.modules())
    ]
    return bool(said) and said[-1]


def _first_norm(block: nn.Module) -> nn.Module | None:
    """The first LayerNorm of a ViT block (``_FIRST_NORMS``), ``None`` if it has none."""
    for name in _FIRST_NORMS:
        norm = getattr(block, name, None)
        if isinstance(norm, nn.LayerNorm):
            return norm
    return None


def _token_reshape(model: nn.Module, block: nn.Module, reshape: BlockReshape) -> Reshape | None:
    """The reshape of a ViT block's tokens, picked out of a `TupleOutput`; else ``None``.

    A ViT block's tokens are led by the model's extra tokens, on the patch embedding's grid
    (its table entry is ``None``, or a `TupleOutput` of ``None`` whose calls say no grid).
    """
    entry = _tables(model).blocks.get(_qualified(block), _identity)
    if isinstance(entry, TupleOutput) and entry.reshape is None and not entry.carries_grid:
        return reshape.reshape if isinstance(reshape, TupleOutput) else None
    return reshape if entry is None and not isinstance(reshape, TupleOutput) else None


def grad_cam_layer(
    model: nn.Module, example: Tensor | None = None
) -> tuple[nn.Module, Reshape | None]:
    """The layer Grad-CAM conventionally explains, with the reshape pytorch-grad-cam needs.

    A vision transformer's last block (see
    [`transformer_stages`][ctc_plugin.cam.transformer_stages]) with its token reshape; for a
    ViT that classifies its class token alone (torchvision's ``VisionTransformer``, timm's ViTs
    with ``global_pool="token"``: ViT, DeiT, DINOv2, CLIP, PiT, CrossViT; Hugging Face's ViT,
    DeiT, ViT MSN), the first LayerNorm of
    the last block (``ln_1``, timm's ``norm1``, Hugging Face's ``layernorm_before``), as
    pytorch-grad-cam's ViT tutorial does (``blocks[-1].norm1``): the patch tokens the last block
    outputs reach no score, so their gradient, and a Grad-CAM map of them, is zero. The first
    LayerNorm also for a ViT whose last block returns a tuple (Hugging Face's BEiT, Data2Vec
    vision, CLIP, MetaCLIP 2): pytorch-grad-cam hooks the tensor a layer returns, and that
    norm's tokens are on the block's grid. For a CNN, the module that returns its last feature
    map ([`last_spatial_layer`][ctc_plugin.cam.last_spatial_layer]: ``layer4`` of a
    ResNet, ``features`` of a VGG, DenseNet or EfficientNet, ``Mixed_7c`` of Inception v3), found
    by running ``example``, and ``None``.
    With ``example``, a token reshape that would guess the patch grid takes the grid the
    patch embedding makes of it (a ViT of dynamic image size on a non-square image); without,
    the token reshapes assume square patch grids where the model says no grid, as
    pytorch-grad-cam's do (a `PatchTokens` refuses a patch count that is no square).

    Args:
        model: The classifier.
        example: An input batch the model takes (its first image is run): needed for a CNN,
            whose last feature map only its forward pass shows (the last ``nn.Conv2d``
            registered can be a shortcut projection or one branch of the last block), and for
            a vision transformer's patch grid on images that are not square.

    Raises:
        ValueError: If the model has neither known transformer blocks nor a spatial feature
            map, a CNN comes without ``example``, or its
            last block returns a tuple and is no ViT block with a first LayerNorm (TNT, MViTv2,
            Hugging Face's Swin, Hiera, PVT, EfficientFormer): no submodule returns that
            block's feature map.
        UnknownBlocksError: If the model has blocks of no known type, one convolution (its
            patch embedding) and attention (see
            [`last_spatial_layer`][ctc_plugin.cam.last_spatial_layer]).
    """
    from torchvision.models.vision_transformer import VisionTransformer

    blocks = transformer_stages(model)
    if blocks:
        last, reshape = blocks[-1]
        # torchvision's ViT, bare or wrapped (a normalising nn.Sequential, say)
        if any(isinstance(m, VisionTransformer) for m in model.modules()):
            return last.ln_1, reshape
        tokens, norm = _token_reshape(model, last, reshape), _first_norm(last)
        tuple_output = isinstance(reshape, TupleOutput)
        if tokens is not None and norm is not None:
            if tuple_output or _classifies_prefix_tokens(model, last):
                return norm, _on_the_grid_of(tokens, model, last, example)
        if tuple_output:
            raise ValueError(
                f"the last block of {type(model).__name__} ({_qualified(last)}) returns a tuple, "
                "and pytorch-grad-cam hooks the tensor a layer returns (no submodule returns "
                "this block's feature map); explain the model with IntegrativeCAM, which picks "
                "the feature map out of the tuple (ctc_plugin.cam.TupleOutput)"
            )
        return last, _on_the_grid_of(reshape, model, last, example)
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise ValueError("the model has no Conv2d and no known transformer block for Grad-CAM")
    if example is None:
        raise ValueError(
            f"{type(model).__name__} has no transformer block of a known type: its last feature "
            "map is found by running it; pass an input batch, grad_cam_layer(model, "
            "example=images) (the last Conv2d registered can be a shortcut or one branch of the "
            "last block, not its output)"
        )
    return last_spatial_layer(model, example), None


def record_conv_grid(
    grids: list[tuple[int, int]], examples: int, module: nn.Module, _inputs: object, output: object
) -> None:
    """Forward hook: keep the output size of the last image ``nn.Conv2d`` that ran in ``grids``.

    An image convolution is one over a batch of ``examples``. For a ViT that is its patch
    embedding's grid, which the square default of
    [`tokens_to_grid`][ctc_plugin.cam.tokens_to_grid] and a grid told by hand must match. A
    convolution over a batch of another size runs on pieces of the images (TNT embeds the
    pixels of each patch with one): its grid is no grid of the image, and is not kept.
    """
    if (
        isinstance(module, nn.Conv2d)
        and isinstance(output, Tensor)
        and output.dim() == 4
        and output.shape[0] == examples
    ):
        grids[:] = [(int(output.shape[-2]), int(output.shape[-1]))]


def record_said_grid(
    grids: list[tuple[int, int]], argument: str, module: nn.Module, args: tuple, kwargs: dict
) -> None:
    """Forward pre-hook of a patch embedding whose call says the patch grid (``argument``).

    Keeps the first image's (rows, columns) as `record_conv_grid` keeps a convolution's output
    size: SigLIP 2's ``spatial_shapes`` (the images of one call share their size).
    """
    value = call_arguments(module, args, kwargs).get(argument)
    if isinstance(value, Tensor) and value.dim() == 2 and value.shape[0] and value.shape[1] == 2:
        grids[:] = [(int(value[0, 0]), int(value[0, 1]))]


def record_returned_grid(
    grids: list[tuple[int, int]], index: int, module: nn.Module, _inputs: object, output: object
) -> None:
    """Forward hook of a patch embedding that returns the patch grid at ``index`` of its output.

    timm's NaFlexViT's (tokens, (rows, columns)); ``None`` there (patches given with their
    coordinates) records nothing.
    """
    value = output[index] if isinstance(output, (tuple, list)) and len(output) > index else None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        grids[:] = [(int(value[0]), int(value[1]))]


def record_embedding_grids(
    model: object, grids: list[tuple[int, int]], scope: CallScope
) -> list[RemovableHandle]:
    """Hooks that keep in ``grids`` the patch grid a known linear patch embedding gives.

    The grid its call says (`patch_grid_arguments`: SigLIP 2's ``spatial_shapes``) or it returns
    (`patch_grid_outputs`: timm's NaFlexViT's), recorded in ``scope``'s pass only; none for
    anything but a module. The caller removes the handles.
    """
    handles = []
    for module, argument in patch_grid_arguments(model):
        said = scope.only(partial(record_said_grid, grids, argument))
        handles.append(module.register_forward_pre_hook(said, with_kwargs=True))
    for module, index in patch_grid_outputs(model):
        returned = scope.only(partial(record_returned_grid, grids, index))
        handles.append(module.register_forward_hook(returned))
    return handles


def _on_the_grid_of(
    reshape: Reshape, model: nn.Module, block: nn.Module, example: Tensor | None
) -> Reshape:
    """``reshape`` on the patch grid the model makes of ``example``, where it would guess it.

    A reshape that guesses the grid (a square) is checked against, or given, the grid of the
    patch embedding, as Integrative CAM does (`check_square_grid`): the output size of the last
    convolution over the whole image that ran before ``block``, or the grid a known linear
    embedding's call says or returns (SigLIP 2's, NaFlexViT's), found by running ``example``'s
    first image. So a model that takes images of other sizes (timm's ``dynamic_img_size``,
    Hugging Face's ``interpolate_pos_encoding``) is explained on a non-square image too.
    Without ``example``, or for a reshape told its grid, ``reshape`` as it is.
    """
    if example is None or not reads_patch_grid(reshape):
        return reshape
    grids: list[tuple[int, int]] = []
    at_block: list[tuple[int, int] | None] = [None]

    def entered(module: nn.Module, inputs: object) -> None:
        at_block[0] = grids[0] if grids else None

    scope = CallScope()  # the probe's pass, not other threads' passes through the model
    conv = scope.only(partial(record_conv_grid, grids, 1))  # the probe runs one image
    handles = [m.register_forward_hook(conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += record_embedding_grids(model, grids, scope)  # SigLIP 2's, NaFlexViT's
    handles.append(block.register_forward_pre_hook(scope.only(entered)))
    _probe(model, example, handles, scope)
    seen = at_block[0]
    if reshape is tokens_to_grid and seen is not None:  # the last h * w tokens, on that grid
        return partial(tokens_to_grid, grid=seen)
    return check_square_grid(
        reshape, (int(example.shape[-2]), int(example.shape[-1])), lambda: seen
    )


def _probe(
    model: nn.Module, example: Tensor, handles: list[RemovableHandle], scope: CallScope
) -> None:
    """Run ``example``'s first image through ``model`` for the hooks of ``handles``; remove them.

    The hooks are ``scope``'s (`CallScope.only`): the pass runs inside it, so another thread's
    pass through the model meanwhile is not recorded. In eval mode, every flag put back after
    (`eval_mode`, which other threads' calls do not see): a BatchNorm of a model in training
    must not take this image's statistics.
    """
    try:
        with scope, eval_mode(model), torch.no_grad():
            model(example[:1])
    finally:
        for handle in handles:
            handle.remove()


_PRODUCTS = frozenset({"matmul", "__matmul__", "__rmatmul__", "bmm", "einsum", "baddbmm"})
#: Torch functions that give a view or a reshaped copy of their one tensor (``.mT``/``.T`` are
#: ``__get__``), and elementwise operations that scale it: queries and keys pass through them
#: between the module that returns them and the product of the scores.
_VIEWS = frozenset(
    {"transpose", "permute", "reshape", "view", "contiguous", "flatten", "unflatten",
     "swapaxes", "movedim", "expand", "__get__", "float", "to", "type_as",
     "mul", "__mul__", "__rmul__", "div", "__truediv__"}
)  # fmt: skip


class _ProbeTrace(TorchFunctionMode):
    """What `last_spatial_layer` reads of a forward pass besides the modules' outputs.

    How many convolutions and attention computations ran, and which four-dimensional tensors
    are attention's rather than feature maps. Attention is what
    `ctc_plugin.cam.layers.computes_attention` sees, and also a softmax over the last
    dimension of scores a product made (``q @ k^T``), whatever their shape (class attention's
    one query, keys fewer than queries). Its tensors are those given to it or made by it (the
    queries and keys, followed back through views of as many dimensions and through scalings to
    the modules that returned them; the probabilities), and any four-dimensional tensor but a
    convolution's output whose third dimension is a token count
    that attention ran over: (N, heads, T, d) queries, keys and values, also after a rotary
    embedding, and (N, heads, T, T) probabilities, also mixed with others (ConViT). (N, T, T, x)
    pair-wise tensors of the tokens (ConViT's relative positions) are too. A feature map that is
    no convolution's output and whose height is such a count (attention along a map's columns)
    would be taken for one as well.
    """

    def __init__(self) -> None:
        super().__init__()
        self.attention = 0
        self.convolutions = 0
        # each dict holds its tensors until the probe ends, so that an id is not reused
        self._of_attention: dict[int, Tensor] = {}
        self._token_counts: set[int] = set()
        self._viewed_from: dict[int, tuple[Tensor, Tensor]] = {}
        self._scores: dict[int, tuple[Tensor, Tensor]] = {}  # a product, or scaled from one
        self._operands: dict[int, tuple[Tensor, list[Tensor]]] = {}  # of each product
        self._convolved: dict[int, Tensor] = {}

    def clear(self) -> None:
        """Let go of every tensor held (a refusal's traceback keeps the trace)."""
        held = (
            self._of_attention,
            self._viewed_from,
            self._scores,
            self._operands,
            self._convolved,
        )
        for table in held:
            table.clear()

    def of_attention(self, tensor: Tensor) -> bool:
        """Whether the four-dimensional ``tensor`` is an attention tensor of the pass."""
        if self._of_attention.get(id(tensor)) is tensor:
            return True
        if self._convolved.get(id(tensor)) is tensor:  # a convolution's map, whatever its size
            return False
        tokens = self._token_counts
        pairwise = tensor.shape[1] == tensor.shape[2] and int(tensor.shape[1]) in tokens
        return int(tensor.shape[2]) in tokens or pairwise

    def _mark(self, tensor: object) -> None:
        """Mark ``tensor`` and what it is a view or a scaling of."""
        while isinstance(tensor, Tensor) and self._of_attention.get(id(tensor)) is not tensor:
            self._of_attention[id(tensor)] = tensor
            entry = self._viewed_from.get(id(tensor))
            tensor = entry[1] if entry is not None and entry[0] is tensor else None

    def _product_of(self, scores: object) -> Tensor | None:
        entry = self._scores.get(id(scores)) if isinstance(scores, Tensor) else None
        return entry[1] if entry is not None and entry[0] is scores else None

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name == "conv2d":
            self.convolutions += 1
            if isinstance(result, Tensor):
                self._convolved[id(result)] = result
            return result
        product = self._product_of(args[0]) if name == "softmax" and args else None
        last = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if product is not None and last not in (-1, getattr(args[0], "ndim", 0) - 1):
            product = None  # a softmax over another dimension of a product: no attention
        if computes_attention(func, args) or product is not None:
            self.attention += 1
            if name == "softmax":
                self._mark(result)
                if product is not None:
                    self._mark(product)
                    for operand in self._operands.pop(id(product), (None, []))[1]:
                        self._mark(operand)
                self._token_counts.update(int(n) for n in result.shape[-2:])
            else:  # its query, key and value: (..., T, E), or (T, [N,] E) for multi-head
                tokens = 0 if func is F.multi_head_attention_forward else -2
                for tensor in (*args[:3], *(kwargs.get(k) for k in ("query", "key", "value"))):
                    if isinstance(tensor, Tensor) and tensor.dim() >= 2:
                        self._mark(tensor)
                        self._token_counts.add(int(tensor.shape[tokens]))
            return result
        if not isinstance(result, Tensor) or result.dim() < 3:
            return result
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor) and t.dim()]
        if name in _PRODUCTS:
            self._scores[id(result)] = (result, result)
            self._operands[id(result)] = (result, inputs)
        elif name in _VIEWS and len(inputs) == 1 and inputs[0].dim() == result.dim():
            # a view of as many dimensions (q split into heads and viewed: not the tokens of a map)
            self._viewed_from[id(result)] = (result, inputs[0])
            product = self._product_of(inputs[0])
            if product is not None:  # scaled scores: still the scores of that product
                self._scores[id(result)] = (result, product)
        elif len(inputs) == 2 and inputs[0].shape == result.shape:
            product = self._product_of(inputs[0])
            if product is not None:  # scores plus a bias (relative positions, a mask)
                self._scores[id(result)] = (result, product)
        return result


def last_spatial_layer(model: nn.Module, example: Tensor) -> nn.Module:
    """Return the module whose output is the last feature map with more than one position.

    This is the layer Grad-CAM conventionally explains (the last convolutional stage, e.g.
    ``layer4`` of a ResNet): among the model's submodules, in the order their forward calls
    finish, the last one returning an ``(N, C, H, W)`` tensor with ``H * W > 1`` that is no
    attention tensor (attention probabilities and the queries, keys and values of attention are
    four-dimensional too; see ``_ProbeTrace``).

    A model with one convolution, a patch embedding (kernel and stride equal), that computes
    attention is a vision transformer: its last map
    is its patch embedding's (or a tensor of its blocks), and a Grad-CAM map of it would not
    explain the blocks. It is refused. A CNN with attention (inside its stages, an
    attention-pooling head as in CLIP's ResNets, or a transformer head over its last map) keeps
    its last map, as Grad-CAM explains such models; so does a transformer with convolutions
    besides its patch embedding (a convolutional stem, convolutional projections), whose blocks
    `grad_cam_layer` takes where their type is known. Compiled submodules run eagerly for the
    probe where torch can (``torch.compiler.set_stance``).

    Args:
        model: The model (its modes are kept).
        example: An input batch it takes, run once to see the maps.

    Raises:
        NoSpatialMapError: when no submodule returns such a tensor (a ``ValueError``).
        UnknownBlocksError: when the model has one convolution, a patch embedding, and
            computes attention; for
            blocks of a known type it names `grad_cam_layer`, which takes them.
    """
    finished: list[tuple[nn.Module, Tensor]] = []
    trace = _ProbeTrace()

    def hook(module: nn.Module, inputs: object, output: object) -> None:
        if (
            isinstance(output, Tensor)
            and output.dim() == 4
            and output.shape[2] * output.shape[3] > 1
        ):
            finished.append((module, output))

    scope = CallScope()  # the probe's pass, not other threads' passes through the model
    hook = scope.only(hook)
    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with compiled_code_eager(), trace:
            _probe(model, example, handles, scope)
        maps = [(m, output.shape) for m, output in finished if not trace.of_attention(output)]
        shapes = {id(m): tuple(shape) for m, shape in maps}
    finally:
        finished.clear()
        trace.clear()
    if not maps:
        raise NoSpatialMapError("the model has no submodule returning a spatial (N, C, H, W) map")
    layer = maps[-1][0]
    if trace.attention and trace.convolutions == 1 and _patches_only(model):
        raise UnknownBlocksError(
            _patch_embedding_only(model, layer, shapes[id(layer)], trace.attention)
        )
    return layer


def _patch_embedding_only(
    model: nn.Module, layer: nn.Module, shape: tuple[int, ...], attention: int
) -> str:
    """The refusal of `last_spatial_layer` for a transformer: what to do instead."""
    subject = getattr(model, "_orig_mod", model)  # a compiled model: the model's own name
    name = module_path(model, layer)  # the user's path, behind a normalisation too
    seen = (
        f"{type(subject).__name__} has one convolution, a vision transformer's patch embedding, "
        f"and computes attention {counted(attention, 'time')}: Grad-CAM on its last map ({name}, "
        f"{type(layer).__name__}, shape {shape}) would not explain the blocks"
    )
    if transformer_stages(model):
        return f"{seen}; grad_cam_layer(model, example) takes its blocks, which are of known types"
    return (
        f"{seen}, whose type the package does not know. Register the block type in "
        "ctc_plugin.cam.BLOCK_RESHAPES (then grad_cam_layer and IntegrativeCAM find "
        "the blocks), or give pytorch-grad-cam the layer yourself: target_layers=[the last "
        "block's first norm], reshape_transform=ctc_plugin.cam.tokens_to_grid"
    )


__all__ = [
    "UnknownBlocksError",
    "grad_cam_layer",
    "last_spatial_layer",
    "patch_grid_arguments",
    "record_conv_grid",
    "refused_blocks",
    "transformer_stages",
]
