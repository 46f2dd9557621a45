"""An audit of IntegrativeCAM on models and calls users bring: each test is a case that gave a
silently wrong map, an internal error, or a refusal that did not say what to do."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module
from torch.utils.checkpoint import checkpoint

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam import PatchTokens, tokens_to_grid

from .cam_models import tiny_cnn

SIZE = (16, 20)


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def hooks_on(model: nn.Module) -> int:
    """Every hook on the model's modules, and torch's global module hooks."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    local = sum(len(getattr(m, kind)) for m in model.modules() for kind in kinds)
    names = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    return local + sum(len(getattr(torch_module, name)) for name in names)


# -- half precision: the per-stage arithmetic ----------------------------------------------------
@pytest.mark.parametrize("kwargs", [{}, {"bias": False, "layer_weights": "uniform"}])
def test_float16_model_gives_the_float32_map(kwargs: dict) -> None:
    """fp16 activations differ from fp32 ones by ~1e-3; the Grad-CAM++ alpha (g**2, g**3) and
    the calibration computed in fp16 underflowed to maps unrelated to the fp32 ones (0.3-0.6)."""
    x = images()
    reference = IntegrativeCAM(tiny_cnn(), **kwargs).attribute(x, target=1)
    half = IntegrativeCAM(tiny_cnn().half(), **kwargs).attribute(x.half(), target=1)
    assert half.dtype == torch.float16
    assert (half.float() - reference).abs().max() < 0.02


def _gradcampp(act: torch.Tensor, grad: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """pytorch-grad-cam's Grad-CAM++ of one layer in float64: normalised, upsampled, normalised."""
    act, grad = act.double(), grad.double()
    sums = act.sum(dim=(2, 3), keepdim=True)
    alpha = grad**2 / (2 * grad**2 + sums * grad**3 + 1e-6)
    alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
    weights = (torch.relu(grad) * alpha).sum(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(_minmax(cam), size=size, mode="bilinear", align_corners=False)
    return _minmax(cam)


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1) - maps.flatten(1).min(1, keepdim=True).values
    return (flat / (1e-7 + flat.max(1, keepdim=True).values)).view_as(maps)


def test_bfloat16_layer_map_is_grad_campp_of_its_own_activations() -> None:
    """Given the bfloat16 model's own activations and gradients, the map is their Grad-CAM++
    (the alpha's g**2 and g**3 computed in bfloat16 lost it)."""
    model = tiny_cnn(inplace=False).bfloat16()
    layer, x = model.features[6], images().bfloat16()
    ours = IntegrativeCAM(model, layers=[layer], bias=False).attribute(x, target=1)
    outputs: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: outputs.append(o))
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf)[:, 1].sum(), outputs)
    handle.remove()
    expected = _gradcampp(outputs[0].detach(), grad, SIZE)
    assert (ours.double() - expected).abs().max() < 0.01


def test_output_of_another_dtype_than_the_stages() -> None:
    """A model returning float64 scores of float32 stages failed inside einsum."""
    model = tiny_cnn()
    x = images()
    ours = IntegrativeCAM(lambda t: model(t).double()).attribute(x, target=1)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, IntegrativeCAM(model).attribute(x, target=1))


# -- layers= -----------------------------------------------------------------------------------
def test_single_sequential_as_layers_is_refused_not_split_into_its_children() -> None:
    """``layers=model.features`` (Captum's form: one module) was silently read as the list of
    its children: every child's output became a stage."""
    model = tiny_cnn()
    with pytest.raises(TypeError, match=r"layers=\[module\].*list\(module\)"):
        IntegrativeCAM(model, layers=model.features)


def test_single_module_as_layers_says_to_wrap_it_in_a_list() -> None:
    model = tiny_cnn()
    with pytest.raises(TypeError, match=r"a single Conv2d.*layers=\[module\]"):
        IntegrativeCAM(model, layers=model.features[0])


def test_module_list_as_layers_is_its_modules() -> None:
    model = tiny_cnn()
    chosen = nn.ModuleList([model.features[2], model.features[6]])
    x = images()
    ours = IntegrativeCAM(model, layers=chosen).attribute(x, target=1)
    torch.testing.assert_close(ours, IntegrativeCAM(model, layers=list(chosen)).attribute(x, 1))


def test_layer_names_are_refused_naming_get_submodule() -> None:
    model = tiny_cnn()
    with pytest.raises(TypeError, match=r"get_submodule\('features.0'\)"):
        IntegrativeCAM(model, layers=["features.0"])


def test_reshape_transform_without_layers_on_a_cnn_is_refused() -> None:
    """It was ignored: the convolutional stages were explained without it."""
    with pytest.raises(ValueError, match="reshape_transform.*layers="):
        IntegrativeCAM(tiny_cnn(), reshape_transform=lambda t: t.flip(-1)).attribute(images(), 1)


class _ChannelsLastBlocks(nn.Module):
    """A patch embedding, then blocks on (N, H, W, C) maps, as Swin's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 8, 4, 4)
        self.block1 = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8))
        self.block2 = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).permute(0, 2, 3, 1)
        t = t + self.block1(t)
        t = t + self.block2(t)
        return self.head(t.mean(dim=(1, 2)))


@pytest.mark.parametrize("size", [(16, 24), (16, 16)])
def test_channels_last_layer_output_without_reshape_is_refused(size: tuple[int, int]) -> None:
    """(N, H, W, C) read as (N, C, H, W): a map on the grid (W, C) of the wrong axes."""
    model = _ChannelsLastBlocks().eval()
    cam = IntegrativeCAM(model, layers=[model.block1, model.block2])
    with pytest.raises(ValueError, match="channels_last_to_grid"):
        cam.attribute(torch.rand(2, 3, *size), target=1)
    assert hooks_on(model) == 0


def test_channels_last_check_leaves_cnn_maps_alone() -> None:
    model = tiny_cnn()
    x = torch.rand(2, 3, 15, 21)  # odd sizes: the pooled grid is not exactly the image's aspect
    maps = IntegrativeCAM(model, layers=[model.features[2], model.features[6]]).attribute(x, 1)
    assert maps.shape == (2, 1, 15, 21)


# -- layer_weights and phi callables ----------------------------------------------------------
@pytest.mark.parametrize("returned", [[1.0, 1.0], 1.0])
def test_layer_weights_returning_no_tensor_is_a_clear_error(returned: object) -> None:
    cam = IntegrativeCAM(tiny_cnn(), layer_weights=lambda grad, act: returned)
    with pytest.raises(TypeError, match="layer_weights returned a .* tensor of shape"):
        cam.attribute(images(), target=1)


def test_layer_weights_in_float64_keep_the_maps_dtype() -> None:
    def score(grad: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return torch.ones(act.shape[0], dtype=torch.float64)

    assert IntegrativeCAM(tiny_cnn(), layer_weights=score).attribute(images(), 1).dtype == (
        torch.float32
    )


@pytest.mark.parametrize("phi", [lambda s: 1.0, math.exp, lambda s: s.expand(2)])
def test_phi_that_torch_func_cannot_differentiate_is_refused_at_construction(phi) -> None:
    with pytest.raises(TypeError, match="phi .*torch operations.*Phi"):
        IntegrativeCAM(tiny_cnn(), phi=phi)


# -- gradient checkpointing and parts run without gradients ------------------------------------
class _Checkpointed(nn.Module):
    """tiny_cnn's features under ``torch.utils.checkpoint`` (timm's set_grad_checkpointing)."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.net = tiny_cnn()
        self.reentrant = reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = checkpoint(self.net.features, x, use_reentrant=self.reentrant)
        return self.net.head(features)


def test_non_reentrant_checkpointing_gives_the_map_of_the_plain_model() -> None:
    """The BatchNorm folding recorded autograd nodes during the forward pass, so the
    recomputation saved fewer tensors: torch's CheckpointError."""
    model = _Checkpointed(reentrant=False).eval()
    x = images()
    ours = IntegrativeCAM(model).attribute(x, target=1)
    torch.testing.assert_close(ours, IntegrativeCAM(model.net).attribute(x, target=1))


def test_timm_grad_checkpointing_gives_the_map_of_the_plain_model() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    x = torch.rand(1, 3, 32, 32)
    plain = IntegrativeCAM(model).attribute(x, target=1)
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(IntegrativeCAM(model).attribute(x, target=1), plain)


def test_reentrant_checkpointing_is_refused_rather_than_dropping_its_stages() -> None:
    """Its forward runs without gradients: no hook reached the stages inside, which were left
    out of the fused map (weight 0) silently."""
    model = _Checkpointed(reentrant=True).eval()
    with pytest.raises(ValueError, match="gradients off.*use_reentrant=False"):
        IntegrativeCAM(model).attribute(images(), target=1)
    assert hooks_on(model) == 0


class _FrozenStem(nn.Module):
    """tiny_cnn with its first stage run under ``torch.no_grad()``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            stem = self.net.features[:3](x)
        return self.net.head(self.net.features[3:](stem))


def test_chosen_layer_run_without_gradients_is_refused() -> None:
    model = _FrozenStem().eval()
    cam = IntegrativeCAM(model, layers=[model.net.features[2], model.net.features[6]])
    with pytest.raises(ValueError, match=r"stages \['net\.features\.2'\] with gradients off"):
        cam.attribute(images(), target=1)
    assert hooks_on(model) == 0


# -- batches -----------------------------------------------------------------------------------
def test_output_with_another_batch_size_is_refused() -> None:
    """A model that averages over the batch returned (1, C): one score explained for all."""
    model = tiny_cnn()
    with pytest.raises(ValueError, match=r"\(1, 5\) for 3 examples"):
        IntegrativeCAM(lambda x: model(x).mean(0, keepdim=True)).attribute(images(3), target=1)


def test_model_normalising_its_input_in_place() -> None:
    """The input was a leaf that requires grad: torch refused the model's in-place op."""
    model = tiny_cnn()

    def normalising(x: torch.Tensor) -> torch.Tensor:
        x.sub_(0.5)
        return model(x + 0.5)

    x = images()
    given = x.clone()
    ours = IntegrativeCAM(normalising).attribute(given, target=1)
    torch.testing.assert_close(ours, IntegrativeCAM(model).attribute(x, target=1))
    assert torch.equal(given, x)  # the caller's tensor is not the one modified


# -- messages ----------------------------------------------------------------------------------
def test_torchscript_model_is_refused_naming_the_cause() -> None:
    scripted = torch.jit.script(tiny_cnn())
    with pytest.raises(TypeError, match="TorchScript.*nn.Module"):
        IntegrativeCAM(scripted)


def test_plain_function_is_named_as_such_in_the_refusal() -> None:
    class _Attention(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = x.flatten(2).transpose(1, 2)
            return F.scaled_dot_product_attention(tokens, tokens, tokens).mean(dim=1)

    attention = _Attention()
    with pytest.raises(ValueError, match="forward function computes attention"):
        IntegrativeCAM(lambda x: attention(x)).attribute(images(), target=1)


def test_hand_written_vit_blocks_match_hooked_tokens() -> None:
    """A ViT written by hand, explained through layers= and tokens_to_grid (class token
    dropped): each stage map is Grad-CAM of the hooked patch tokens."""

    class _Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.mlp = nn.Linear(8, 8)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            t = t + self.attn(t, t, t, need_weights=False)[0]
            return t + self.mlp(t)

    torch.manual_seed(0)
    embed, cls, blocks, head = (
        nn.Conv2d(3, 8, 4, 4),
        torch.randn(1, 1, 8),
        [_Block(), _Block()],
        nn.Linear(8, 3),
    )

    def vit(x: torch.Tensor) -> torch.Tensor:
        t = embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([cls.expand(len(t), -1, -1), t], dim=1)
        for block in blocks:
            t = block(t)
        return head(t[:, 1:].mean(dim=1))

    x = torch.rand(2, 3, 16, 16)
    cam = IntegrativeCAM(
        vit, layers=blocks, reshape_transform=tokens_to_grid, phi="identity", bias=False
    )
    _, layer_maps = cam.attribute(x, target=1, return_layer_maps=True)
    outputs: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in blocks]
    scores = vit(x)[:, 1].sum()
    for handle in handles:
        handle.remove()
    for index, (tokens, grad) in enumerate(zip(outputs, torch.autograd.grad(scores, outputs))):
        a, g = (t[:, 1:].transpose(1, 2).reshape(2, 8, 4, 4).detach() for t in (tokens, grad))
        cam_map = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
        flat = cam_map.flatten(1) - cam_map.flatten(1).min(1, keepdim=True).values
        expected = (flat / (1e-7 + flat.max(1, keepdim=True).values)).view_as(cam_map)
        expected = F.interpolate(expected, size=(16, 16), mode="bilinear", align_corners=False)
        torch.testing.assert_close(layer_maps.maps[:, index : index + 1], expected)


def test_phi_derivative_returning_no_tensor_is_a_clear_error() -> None:
    from ctc_plugin.cam import Phi

    phi = Phi(lambda s: 1.0, lambda s: 0.0, lambda s: 0.0, "constant")
    with pytest.raises(TypeError, match="constant: phi' returned a float"):
        IntegrativeCAM(tiny_cnn(), phi=phi).attribute(images(), target=1)


def test_a_function_wrapping_a_known_vit_says_to_pass_the_module() -> None:
    """Its blocks are of a known type, but a function's modules cannot be searched: the
    refusal said no module was a known block."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(16, 8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=8).eval()
    with pytest.raises(ValueError, match="plain function cannot be found.*nn.Module"):
        IntegrativeCAM(lambda x: vit(x)).attribute(torch.rand(1, 3, 16, 16), target=1)
    assert IntegrativeCAM(vit).attribute(torch.rand(1, 3, 16, 16), target=1).shape[-2:] == (16, 16)


def test_convolutions_with_1x1_maps_only_are_not_called_no_convolution() -> None:
    """Every stage was left out for its 1x1 map, and the refusal said no convolution ran."""
    model = nn.Sequential(nn.Conv2d(3, 4, 8), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)).eval()
    with pytest.raises(ValueError, match=r"every convolution .* made a 1 x 1 map.*larger images"):
        IntegrativeCAM(model).attribute(torch.rand(2, 3, 8, 8), target=1)


class _ViTWithConvHead(nn.Module):
    """A ViT (class token first) whose patch tokens go back on their grid into a strided
    convolution: the last convolution of the pass is the head's, on a smaller grid."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 8, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.blocks = nn.ModuleList([nn.TransformerEncoderLayer(8, 2, 16, 0.0, batch_first=True)])
        self.head = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.embed(x)
        n, c, h, w = grid.shape
        tokens = torch.cat([self.cls.expand(n, -1, -1), grid.flatten(2).transpose(1, 2)], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        patches = tokens[:, 1:].transpose(1, 2).reshape(n, c, h, w)
        return self.fc(F.relu(self.head(patches)).mean(dim=(2, 3)))


@pytest.mark.parametrize(
    ("reshape", "size"), [(tokens_to_grid, (16, 16)), (PatchTokens(prefix=1), (16, 24))]
)
def test_patch_grid_is_the_one_seen_when_the_block_returns(reshape, size) -> None:
    """The grid was read again in the backward pass, from the convolution that ran last in the
    whole pass (the head's): the square default was refused as "more extra tokens than it can
    tell apart", PatchTokens as "do not fill the grid" (a PiT's pooling, too)."""
    model = _ViTWithConvHead().eval()
    x = torch.rand(2, 3, *size)
    cam = IntegrativeCAM(model, layers=list(model.blocks), reshape_transform=reshape, bias=False)
    ours = cam.attribute(x, target=1)
    outputs: list[torch.Tensor] = []
    handle = model.blocks[0].register_forward_hook(lambda m, i, o: outputs.append(o))
    (grad,) = torch.autograd.grad(model(x)[:, 1].sum(), outputs)
    handle.remove()
    rows, columns = size[0] // 4, size[1] // 4
    a, g = (t[:, 1:].transpose(1, 2).reshape(2, 8, rows, columns) for t in (outputs[0], grad))
    assert (ours.double() - _gradcampp(a.detach(), g, size)).abs().max() < 1e-4


def test_pit_on_a_non_square_image() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("pit_ti_224", pretrained=False, num_classes=3, img_size=(64, 96))
    maps = IntegrativeCAM(model.eval()).attribute(torch.rand(1, 3, 64, 96), target=1)
    assert maps.shape == (1, 1, 64, 96) and bool(torch.isfinite(maps).all())


class _BatchStatistics(nn.Module):
    """A BatchNorm without running statistics: it normalises with the batch's, in eval too."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, track_running_stats=False)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv1(x)))
        return self.fc(F.relu(self.conv2(x)).mean(dim=(2, 3)))


def test_batch_statistics_with_several_examples_are_refused_without_bias() -> None:
    """A BatchNorm without running statistics, ``bias=False``: on several examples each
    example's map would depend on the others (the batch's statistics mix them; example 0's map
    moved by ~0.07 when examples 1 and 2 changed): refused; one example at a time runs."""
    model = _BatchStatistics().eval()
    x = images(3)
    changed = torch.cat([x[:1], images(2, seed=1)])
    cam = IntegrativeCAM(model, bias=False)
    for batch in (x, changed):
        with pytest.raises(ValueError, match="depend on the other examples"):
            cam.attribute(batch, target=1)
    assert IntegrativeCAM(model, bias=False).attribute(x[:1], target=1).shape == (1, 1, *SIZE)
