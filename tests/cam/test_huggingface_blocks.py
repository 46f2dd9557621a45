"""Integrative CAM finds the blocks of Hugging Face ``transformers``' vision transformers.

Each stage's activation and gradient, as Integrative CAM receives them, are checked against maps
made without its reshapes: the model's own ``output_hidden_states=True`` hidden states (and their
gradients, taken by autograd), put on the grid by hand or by the family's own code (Swin's and
Hiera's ``reshaped_hidden_states``, Hiera's ``reroll``); where a family's hidden states skip
blocks (LeViT, MobileViT, EfficientFormer give one per stage), the blocks' outputs are hooked and
put on the grid by hand, and the hooked outputs are checked to be the hidden states where they
give one. The number of leading extra tokens is the one each family's classifier code drops
(``1 + config.num_register_tokens`` for DINOv2 with registers), the grid is the image size over
the patch size, and the sizes include grids that are not square.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from ctc_plugin import IntegrativeCAM
from ctc_plugin.adapters.huggingface import HuggingFaceClassifier
from ctc_plugin.cam import grad_cam_layer, transformer_stages
from ctc_plugin.cam.integrative import UnknownBlocksError
from ctc_plugin.cam.known_blocks import (
    HUGGINGFACE_BLOCKS,
    HUGGINGFACE_REFUSED,
    PATCH_GRID_ARGUMENTS,
)
from ctc_plugin.cam.reshapes import PatchTokens, TupleOutput, call_arguments
from ctc_plugin.cam.transformers import refused_blocks
from ctc_plugin.model_families import HUGGINGFACE_FAMILIES, huggingface_classifier
from ctc_plugin.testing import randomise_statistics_and_biases

from .stage_maps import received_stage_maps

transformers = pytest.importorskip("transformers")

#: (act, grad) maps of one stage, (N, C, H, W) each
Maps = tuple[Tensor, Tensor]
#: stage index -> its maps
Reference = dict[int, Maps]


def _grid(tokens: Tensor, prefix: int, rows: int, columns: int) -> Tensor:
    """Tokens after ``prefix`` leading ones, row-major on a ``rows x columns`` grid."""
    patches = tokens[:, prefix:]
    assert patches.shape[1] == rows * columns
    return patches.reshape(tokens.shape[0], rows, columns, -1).permute(0, 3, 1, 2)


def _forward(model: HuggingFaceClassifier, x: Tensor, target: int) -> tuple[Tensor, object]:
    """The target score and the model's own output with its hidden states."""
    with torch.enable_grad():
        inputs = model.model_inputs(x)  # SigLIP 2: the images cut into patches
        output = model.model(**inputs, output_hidden_states=True, **model.inputs)
    return output.logits[:, target].sum(), output


def _grads(score: Tensor, tensors: list[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(score, tensors, retain_graph=True))


def _vit_reference(prefix: Callable[[nn.Module], int], patch: int = 8):
    """Every layer's output (hidden states 1:) after the leading tokens the family drops."""

    def reference(model: HuggingFaceClassifier, x: Tensor, target: int) -> Reference:
        score, output = _forward(model, x, target)
        hidden = list(output.hidden_states[1:])
        leading = prefix(model.model)
        rows, columns = x.shape[-2] // patch, x.shape[-1] // patch
        return {
            i: (_grid(h.detach(), leading, rows, columns), _grid(g, leading, rows, columns))
            for i, (h, g) in enumerate(zip(hidden, _grads(score, hidden), strict=True))
        }

    return reference


def _registers(model: nn.Module) -> int:
    """DINOv2 with registers: its classifier reads patches after ``1 + num_register_tokens``."""
    registers = model.config.num_register_tokens
    assert registers > 0  # the family has registers to drop
    return 1 + registers


def _swin_reference(model: HuggingFaceClassifier, x: Tensor, target: int) -> Reference:
    """Swin's own ``reshaped_hidden_states`` of each stage's last layer (before downsampling)."""
    encoder = model.model.base_model.encoder

    def before_downsampling(_module: nn.Module, args: tuple, kwargs: dict) -> tuple:
        return args, {**kwargs, "output_hidden_states_before_downsampling": True}

    handle = encoder.register_forward_pre_hook(before_downsampling, with_kwargs=True)
    try:
        score, output = _forward(model, x, target)
    finally:
        handle.remove()
    hidden, maps = list(output.hidden_states[1:]), output.reshaped_hidden_states[1:]
    reference = {}
    for i, (act, grad) in enumerate(zip(maps, _grads(score, hidden), strict=True)):
        batch, channels, rows, columns = act.shape
        grad = grad.view(batch, rows, columns, channels).permute(0, 3, 1, 2)  # as Swin does
        reference[i] = (act.detach(), grad)
    return reference


def _hiera_reference(model: HuggingFaceClassifier, x: Tensor, target: int) -> Reference:
    """Hiera's own ``reroll`` of each stage's output (one layer per stage)."""
    score, output = _forward(model, x, target)
    hidden, maps = list(output.hidden_states[1:]), output.reshaped_hidden_states[1:]
    reroll = model.model.base_model.encoder.reroll
    return {
        i: (act.detach().permute(0, 3, 1, 2), reroll(grad, stage_idx=i).permute(0, 3, 1, 2))
        for i, (act, grad) in enumerate(zip(maps, _grads(score, hidden), strict=True))
    }


def _pvt_reference(model: HuggingFaceClassifier, x: Tensor, target: int) -> Reference:
    """Each block's hidden state; the last stage's led by PVT's class token."""
    score, output = _forward(model, x, target)
    config = model.model.config
    hidden = list(output.hidden_states[: len(config.depths)])  # one block a stage; last: the norm
    reference, (rows, columns) = {}, x.shape[-2:]
    for i, (h, g) in enumerate(zip(hidden, _grads(score, hidden), strict=True)):
        rows, columns = rows // config.patch_sizes[i], columns // config.patch_sizes[i]
        leading = 1 if i == config.num_encoder_blocks - 1 else 0  # the class token
        reference[i] = (_grid(h.detach(), leading, rows, columns), _grid(g, leading, rows, columns))
    return reference


def _hooked(
    model: HuggingFaceClassifier, x: Tensor, target: int, blocks: tuple[str, ...]
) -> tuple[Tensor, object, list[tuple[nn.Module, Tensor]]]:
    """The score, the model's output, and each block's output tensor (first in a tuple).

    ``blocks`` names the block classes; blocks inside a hooked block are not hooked.
    """
    chosen: list[nn.Module] = []
    for module in model.modules():
        inside = any(any(m is module for m in block.modules()) for block in chosen)
        if type(module).__name__ in blocks and not inside:
            chosen.append(module)
    outputs: list[tuple[nn.Module, Tensor]] = []

    def keep(module: nn.Module, _inputs: object, output: object) -> None:
        outputs.append((module, output[0] if isinstance(output, tuple) else output))

    handles = [block.register_forward_hook(keep) for block in chosen]
    try:
        score, output = _forward(model, x, target)
    finally:
        for handle in handles:
            handle.remove()
    return score, output, outputs


def _anchored(
    hidden: list[Tensor], outputs: list[tuple[nn.Module, Tensor]], indices: tuple[int, ...]
) -> None:
    """The hooked outputs at ``indices`` are the model's own hidden states."""
    assert len(hidden) == len(indices)
    for state, index in zip(hidden, indices, strict=True):
        assert outputs[index][1] is state


def _square(tokens: Tensor) -> Tensor:
    """LeViT's tokens on its square grid: its resolutions are single numbers, and its subsampling
    views the tokens as ``(batch, resolution, resolution, C)``."""
    side = math.isqrt(tokens.shape[1])
    return _grid(tokens, 0, side, side)


def _levit_reference(model: HuggingFaceClassifier, x: Tensor, target: int) -> Reference:
    """Each residual layer's tokens; a stage's last one is the model's hidden state."""
    score, output, outputs = _hooked(model, x, target, ("LevitResidualLayer",))
    _anchored(list(output.hidden_states[1:]), outputs, (2, 5, 7))
    grads = _grads(score, [t for _, t in outputs])
    pairs = enumerate(zip(outputs, grads, strict=True))
    return {i: (_square(t.detach()), _square(g)) for i, ((_, t), g) in pairs}


def _maps_reference(blocks: tuple[str, ...], indices: tuple[int, ...]):
    """(N, C, H, W) blocks' outputs; the model's hidden states are those at ``indices``."""

    def reference(model: HuggingFaceClassifier, x: Tensor, target: int) -> Reference:
        score, output, outputs = _hooked(model, x, target, blocks)
        _anchored(list(output.hidden_states), outputs, indices)
        grads = _grads(score, [t for _, t in outputs])
        pairs = enumerate(zip(outputs, grads, strict=True))
        return {i: (t.detach(), g) for i, ((_, t), g) in pairs}

    return reference


def _efficientformer_reference(model: HuggingFaceClassifier, x: Tensor, target: int) -> Reference:
    """Pooling blocks' maps; the attention block's tokens on the last pooling block's grid."""
    score, output, outputs = _hooked(
        model, x, target, ("EfficientFormerMeta4D", "EfficientFormerMeta3D")
    )
    hidden = list(output.hidden_states)
    _anchored([hidden[1], hidden[3], hidden[5], hidden[7]], outputs, (0, 1, 2, 4))
    grads = _grads(score, [t for _, t in outputs])
    rows, columns = x.shape[-2] // 32, x.shape[-1] // 32  # a stem of 4, three downsamplings
    reference = {}
    for i, ((module, t), g) in enumerate(zip(outputs, grads, strict=True)):
        if type(module).__name__ == "EfficientFormerMeta3D":
            reference[i] = (_grid(t.detach(), 0, rows, columns), _grid(g, 0, rows, columns))
        else:
            reference[i] = (t.detach(), g)
    return reference


def _reduction_reference(block: str, norms: Callable[[nn.Module], list[nn.Module]]):
    """PVT v2's and SegFormer's blocks: (N, H*W, C) tokens on each stage's grid.

    A stage's grid is the image's size over the product of the strides so far; each block's
    tokens, normalised by the stage's LayerNorm and put on that grid by hand, are the model's own
    hidden state of the stage (one block a stage here).
    """

    def reference(model: HuggingFaceClassifier, x: Tensor, target: int) -> Reference:
        score, output, outputs = _hooked(model, x, target, (block,))
        config, stages = model.model.config, norms(model.model)
        grads = _grads(score, [t for _, t in outputs])
        reference, (rows, columns) = {}, x.shape[-2:]
        for i, ((_, t), g) in enumerate(zip(outputs, grads, strict=True)):
            rows, columns = rows // config.strides[i], columns // config.strides[i]
            state = _grid(stages[i](t.detach()), 0, rows, columns)
            torch.testing.assert_close(state, output.hidden_states[i], rtol=0, atol=0)
            reference[i] = (_grid(t.detach(), 0, rows, columns), _grid(g, 0, rows, columns))
        return reference

    return reference


def _mobilevit(version: str) -> tuple[str, ...]:
    return (f"MobileViT{version}InvertedResidual", f"MobileViT{version}Layer")


@dataclass(frozen=True)
class Case:
    """A family's model, its input size, how many stages, and the reference of every stage."""

    make: Callable[[], HuggingFaceClassifier]
    size: tuple[int, int]
    stages: int
    reference: Callable[[HuggingFaceClassifier, Tensor, int], Reference]


def _family(name: str) -> Callable[[], HuggingFaceClassifier]:
    return lambda: huggingface_classifier(name)


def _square_case(name: str, stages: int, reference) -> Case:
    side = HUGGINGFACE_FAMILIES[name].size
    return Case(_family(name), (side, side), stages, reference)


def _interpolating(name: str) -> Callable[[], HuggingFaceClassifier]:
    """The family's model called with ``interpolate_pos_encoding=True`` (other image sizes)."""
    return lambda: HuggingFaceClassifier(
        huggingface_classifier(name).model, interpolate_pos_encoding=True
    )


def _hiera_64_by_128() -> HuggingFaceClassifier:
    torch.manual_seed(0)
    config = transformers.HieraConfig(
        image_size=[64, 128], embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
        num_labels=5,
    )  # fmt: skip
    model = HuggingFaceClassifier(transformers.HieraForImageClassification(config))
    return randomise_statistics_and_biases(model, seed=1, noise=0.05).eval().double()


def _fixed(count: int) -> Callable[[nn.Module], int]:
    return lambda _model: count


CASES = {
    "ViT": _square_case("ViT", 2, _vit_reference(_fixed(1))),
    "DeiT": _square_case("DeiT", 2, _vit_reference(_fixed(2))),  # class, distillation
    "DeiT with teacher": _square_case("DeiT with teacher", 2, _vit_reference(_fixed(2))),
    "BEiT": _square_case("BEiT", 2, _vit_reference(_fixed(1))),
    "Data2Vec vision": _square_case("Data2Vec vision", 2, _vit_reference(_fixed(1))),
    "DINOv2": _square_case("DINOv2", 2, _vit_reference(_fixed(1))),
    "DINOv2 with registers": _square_case("DINOv2 with registers", 2, _vit_reference(_registers)),
    "I-JEPA": _square_case("I-JEPA", 2, _vit_reference(_fixed(0))),
    "ViT MSN": _square_case("ViT MSN", 2, _vit_reference(_fixed(1))),
    "CLIP": _square_case("CLIP", 2, _vit_reference(_fixed(1))),
    "MetaCLIP 2": _square_case("MetaCLIP 2", 2, _vit_reference(_fixed(1))),
    "SigLIP": _square_case("SigLIP", 2, _vit_reference(_fixed(0))),
    "SigLIP 2": _square_case("SigLIP 2", 2, _vit_reference(_fixed(0))),
    "Swin": _square_case("Swin", 2, _swin_reference),
    "Swin v2": _square_case("Swin v2", 2, _swin_reference),
    "Donut Swin": _square_case("Donut Swin", 2, _swin_reference),
    "Hiera": _square_case("Hiera", 4, _hiera_reference),
    "PVT": _square_case("PVT", 4, _pvt_reference),
    "PVT v2": _square_case(
        "PVT v2",
        4,
        _reduction_reference(
            "PvtV2BlockLayer",
            lambda model: [layer.layer_norm for layer in model.pvt_v2.encoder.layers],
        ),
    ),
    "SegFormer": _square_case(
        "SegFormer",
        4,
        _reduction_reference(
            "SegformerLayer", lambda model: list(model.segformer.encoder.layer_norm)
        ),
    ),
    "LeViT": _square_case("LeViT", 8, _levit_reference),
    "LeViT with teacher": _square_case("LeViT with teacher", 8, _levit_reference),
    "MobileViT": _square_case("MobileViT", 7, _maps_reference(_mobilevit(""), (0, 3, 4, 5, 6))),
    "MobileViT v2": _square_case(
        "MobileViT v2", 6, _maps_reference(_mobilevit("V2"), (0, 2, 3, 4, 5))
    ),
    "EfficientFormer": _square_case("EfficientFormer", 5, _efficientformer_reference),
    # grids that are not square
    "ViT, 32 x 64": Case(_interpolating("ViT"), (32, 64), 2, _vit_reference(_fixed(1))),
    "DINOv2 with registers, 48 x 32": Case(
        _family("DINOv2 with registers"), (48, 32), 2, _vit_reference(_registers)
    ),
    "BEiT, 48 x 32": Case(_interpolating("BEiT"), (48, 32), 2, _vit_reference(_fixed(1))),
    "SigLIP 2, 48 x 32": Case(_family("SigLIP 2"), (48, 32), 2, _vit_reference(_fixed(0))),
    "Swin, 32 x 48": Case(_family("Swin"), (32, 48), 2, _swin_reference),
    "Hiera, 64 x 128": Case(_hiera_64_by_128, (64, 128), 4, _hiera_reference),
}


@pytest.mark.parametrize("name", CASES)
def test_each_stage_is_the_models_own_hidden_state_on_its_grid(name: str) -> None:
    """Activation and gradient of every stage, against the family's hidden states."""
    case = CASES[name]
    model = case.make()
    x = torch.rand(2, 3, *case.size, generator=torch.Generator().manual_seed(3)).double()
    received = received_stage_maps(model, x, target=1)
    reference = case.reference(model, x.clone(), 1)
    assert len(received) == len(transformer_stages(model)) == case.stages
    assert sorted(reference) == list(range(case.stages))  # every stage checked
    for index, (act, grad) in enumerate(received):
        act_by_hand, grad_by_hand = reference[index]
        assert act.shape == act_by_hand.shape
        torch.testing.assert_close(act, act_by_hand, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, grad_by_hand, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", [name for name in CASES if "," not in name])
def test_each_family_gets_a_fused_map_of_every_stage(name: str) -> None:
    case = CASES[name]
    model = case.make()
    x = torch.rand(2, 3, *case.size, generator=torch.Generator().manual_seed(1)).double()
    maps, layers = IntegrativeCAM(model).attribute(x, target=1, return_layer_maps=True)
    assert maps.shape == (2, 1, *case.size) and torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    assert len(layers.names) == case.stages and set(layers.steps) == {("layer",)}
    assert layers.maps.shape == (2, case.stages, *case.size)


#: family -> the attribute of the last stage Grad-CAM explains ("" the stage itself; None refused)
GRAD_CAM = {
    "ViT": "layernorm_before",  # its head reads the class token alone
    "DeiT": "layernorm_before",
    "ViT MSN": "layernorm_before",
    "BEiT": "layernorm_before",  # its layers return tuples
    "Data2Vec vision": "layernorm_before",
    "CLIP": "layer_norm1",
    "MetaCLIP 2": "layer_norm1",
    "DINOv2": "",
    "DINOv2 with registers": "",
    "I-JEPA": "",
    "SigLIP": "",
    "SigLIP 2": "",
    "LeViT": "",
    "MobileViT": "",
    "MobileViT v2": "",
    "Swin": None,  # (tokens,) on the grid it is called with
    "Swin v2": None,
    "Donut Swin": None,
    "Hiera": None,  # (tokens, attention)
    "PVT": None,
    "PVT v2": None,
    "SegFormer": None,
    "EfficientFormer": None,
}


@pytest.mark.parametrize("name", GRAD_CAM)
def test_grad_cam_layer_of_each_family_runs_in_pytorch_grad_cam(name: str) -> None:
    """A class-token ViT's last layer's first norm (its patch tokens reach the score), a tuple
    layer's first norm where it has one, else the last stage; refused where no submodule returns
    the stage's map."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = huggingface_classifier(name)
    last, found = transformer_stages(model)[-1]
    if GRAD_CAM[name] is None:
        with pytest.raises(ValueError, match="returns a tuple.*pytorch-grad-cam.*IntegrativeCAM"):
            grad_cam_layer(model)
        return
    layer, reshape = grad_cam_layer(model)
    assert layer is (getattr(last, GRAD_CAM[name]) if GRAD_CAM[name] else last)
    expected = found.reshape if isinstance(found, TupleOutput) else found
    assert reshape == expected
    side = HUGGINGFACE_FAMILIES[name].size
    x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(2)).double()
    with GradCAM(model, [layer], reshape_transform=reshape) as cam:
        maps = cam(x, targets=[ClassifierOutputTarget(1)] * 2)
    assert maps.shape == (2, side, side) and (maps >= 0).all()
    if GRAD_CAM[name]:
        assert maps.max() > 0.5


def test_a_class_token_vits_last_layer_has_a_zero_grad_cam() -> None:
    """Why its first norm is taken: the patch tokens the last layer outputs reach no score."""
    model = huggingface_classifier("ViT")
    last, reshape = transformer_stages(model)[-1]
    outputs = []
    handle = last.register_forward_hook(lambda m, i, o: outputs.append(o))
    score = model(torch.rand(1, 3, 32, 32).double())[:, 1].sum()
    handle.remove()
    (grad,) = torch.autograd.grad(score, outputs)
    assert grad[:, 1:].abs().max() == 0 and grad[:, 0].abs().max() > 0
    assert reshape == PatchTokens(1)


def test_hiera_layers_outside_a_hiera_encoder_are_refused_with_the_reason() -> None:
    """Their token order is the encoder's schedule: without it it is unknown."""
    from transformers.models.hiera.modeling_hiera import HieraLayer

    torch.manual_seed(0)
    config = transformers.HieraConfig(embed_dim=8)

    class Layers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.layers = nn.ModuleList([HieraLayer(config, 8, 8, num_heads=1)])
            self.head = nn.Linear(8, 3)

        def forward(self, x: Tensor) -> Tensor:
            tokens = self.embed(x).flatten(2).mT
            for layer in self.layers:
                tokens = layer(tokens)[0]
            return self.head(tokens.mean(1))

    model = Layers().eval()
    assert transformer_stages(model) == []
    assert any("HieraEncoder" in reason for reason in refused_blocks(model))
    with pytest.raises(UnknownBlocksError, match="mask-unit order.*HieraEncoder.*UnrolledTokens"):
        IntegrativeCAM(model).attribute(torch.rand(1, 3, 32, 32), target=0)


def test_clips_text_transformer_holds_no_image_tokens() -> None:
    """CLIP's text layers are its vision layers' class: in a zero-shot classifier (images against
    fixed texts) only the vision transformer's layers are stages."""
    torch.manual_seed(0)
    tiny = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = transformers.CLIPConfig(
        text_config={
            **tiny,
            "intermediate_size": 32,
            "vocab_size": 50,
            "max_position_embeddings": 8,
        },
        vision_config={**tiny, "intermediate_size": 32, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    clip = transformers.CLIPModel(config).eval()
    texts = torch.tensor([[1, 5, 7, 2], [1, 9, 3, 2], [1, 4, 4, 2]])

    class ZeroShot(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = clip

        def forward(self, x: Tensor) -> Tensor:
            return self.clip(input_ids=texts, pixel_values=x).logits_per_image

    model = ZeroShot()
    stages = transformer_stages(model)
    assert [block for block, _ in stages] == list(clip.vision_model.encoder.layers)
    assert all(r == TupleOutput(0, PatchTokens(1)) for _, r in stages)
    maps, layers = IntegrativeCAM(model).attribute(
        torch.rand(2, 3, 32, 32), target=1, return_layer_maps=True
    )
    assert maps.shape == (2, 1, 32, 32) and len(layers.names) == 2


class _GridBlock(nn.Module):
    """A block that gets its tokens' grid as arguments and returns (tokens,), as PVT's layers."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, tokens: Tensor, height: int, width: int) -> tuple[Tensor]:
        assert tokens.shape[1] == height * width
        return (tokens + self.linear(tokens),)


class _GridModel(nn.Module):
    """Patches of 4 pixels, one ``_GridBlock``, called by position or by keyword."""

    def __init__(self, by_keyword: bool) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 4, stride=4)
        self.block = _GridBlock()
        self.head = nn.Linear(4, 3)
        self.by_keyword = by_keyword

    def forward(self, x: Tensor) -> Tensor:
        grid = self.embed(x)
        tokens, (height, width) = grid.flatten(2).mT, grid.shape[-2:]
        if self.by_keyword:
            (tokens,) = self.block(tokens, width=width, height=height)
        else:
            (tokens,) = self.block(tokens, height, width)
        return self.head(tokens.mean(1))


@pytest.mark.parametrize("by_keyword", [False, True], ids=["positional", "keyword"])
def test_a_tuple_output_reads_the_grid_its_block_is_called_with(by_keyword: bool) -> None:
    """An 8 x 16 image in patches of 4: a 2 x 4 grid, which no square default would find."""
    torch.manual_seed(0)
    model = _GridModel(by_keyword).double().eval()
    x = torch.rand(1, 3, 8, 16, dtype=torch.float64)
    read = TupleOutput(0, PatchTokens(0), grid_arguments=("height", "width"))
    seen = []

    def record(grad: Tensor, act: Tensor) -> Tensor:
        seen.append(act)
        return torch.ones(1, dtype=act.dtype)

    cam = IntegrativeCAM(model, layers=[model.block], reshape_transform=read, layer_weights=record)
    cam.attribute(x, target=0)
    with torch.no_grad():
        (tokens,) = model.block(model.embed(x).flatten(2).mT, 2, 4)
    (act,) = seen
    assert torch.equal(act, tokens.mT.reshape(1, 4, 2, 4))


def test_call_arguments_are_bound_to_the_blocks_forward() -> None:
    block = _GridBlock()
    tokens = torch.zeros(1, 6, 4)
    assert call_arguments(block, (tokens, 2), {"width": 3}) == {
        "tokens": tokens,
        "height": 2,
        "width": 3,
    }
    assert call_arguments(block, (tokens, 2, 3, 4), {}) == {}  # not forward's arguments


def test_a_tuple_output_names_the_grid_arguments_it_cannot_read() -> None:
    tokens = (torch.zeros(1, 6, 4),)
    read = TupleOutput(0, PatchTokens(0), grid_arguments=("height", "width"))
    with pytest.raises(ValueError, match=r"called without its argument\(s\) \['width'\]"):
        read.select(tokens, {"height": 2})
    with pytest.raises(ValueError, match=r"\['input_dimensions'\] is 'wide', not the"):
        TupleOutput(0, grid_arguments=("input_dimensions",)).select(
            tokens, {"input_dimensions": "wide"}
        )
    with pytest.raises(ValueError, match="not both"):
        TupleOutput(0, grid_item=1, grid_arguments=("height",))
    with pytest.raises(ValueError, match="more than the"):
        TupleOutput(0, grid_arguments=("a", "b", "c"))
    with pytest.raises(ValueError, match="must be a PatchTokens"):
        TupleOutput(0, torch.relu, grid_arguments=("height", "width"))


@pytest.mark.parametrize(
    "family",
    [
        "Perceiver, learned positions",
        "Perceiver, Fourier features",
        "Perceiver, convolutional stem",
    ],
)
def test_perceivers_latent_blocks_are_refused_with_the_reason(family: str) -> None:
    """Its layers hold latents, which read the image by cross-attention: no map of the image
    (a convolutional stem's stage alone would pass for "all layers")."""
    model = huggingface_classifier(family)
    side = HUGGINGFACE_FAMILIES[family].size
    x = torch.rand(1, 3, side, side, dtype=torch.float64)
    with pytest.raises(UnknownBlocksError, match="does not explain: Perceiver's layers hold a"):
        IntegrativeCAM(model).attribute(x, target=1)
    assert not any(module._forward_hooks for module in model.modules())


def test_every_table_entry_names_a_class_of_the_installed_transformers() -> None:
    """The qualified names are matched exactly: a renamed class would never match."""
    import importlib

    for name in [*HUGGINGFACE_BLOCKS, *PATCH_GRID_ARGUMENTS, *HUGGINGFACE_REFUSED]:
        module, _, kind = name.rpartition(".")
        assert hasattr(importlib.import_module(module), kind), name


@pytest.mark.slow  # a fresh interpreter importing torch
def test_finding_blocks_never_imports_transformers() -> None:
    code = (
        "import sys; from ctc_plugin import zoo; "
        "from ctc_plugin.cam import transformer_stages; "
        "import ctc_plugin.adapters.huggingface; "
        "assert transformer_stages(zoo.build('vit', 6)); "
        "assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
