"""Small models and masks for tests, tutorials and benchmarks (like ``captum.testing``).

[`RandomCNN`][ctc_plugin.testing.RandomCNN] builds a small convolutional network from a few switches
covering the operations CTC must handle: BatchNorm with random running statistics, residual adds,
concatenation, max or average pooling, ReLU or LeakyReLU as modules or functional calls, in-place or
not, and an input normalisation written as plain tensor arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class CNNSpec:
    """The switches of a [`RandomCNN`][ctc_plugin.testing.RandomCNN].

    Attributes:
        width: Channels of every convolution.
        blocks: Number of conv blocks.
        batch_norm: BatchNorm after each block convolution.
        conv_bias: Whether block convolutions have a bias (besides BatchNorm's shift).
        residual: Add each block's input to its output.
        concat: Each block also runs a parallel 1x1 branch and concatenates it.
        pool: ``"max"`` or ``"avg"`` pooling after each block.
        activation: ``"relu"`` or ``"leaky_relu"``.
        functional: Call activations as ``torch.nn.functional`` functions, not modules.
        inplace: Use in-place activations.
        normalise: Start with ``(x - mean) / std`` written as tensor arithmetic.
        classes: Number of outputs.
    """

    width: int = 4
    blocks: int = 2
    batch_norm: bool = True
    conv_bias: bool = True
    residual: bool = False
    concat: bool = False
    pool: str = "max"
    activation: str = "relu"
    functional: bool = False
    inplace: bool = False
    normalise: bool = False
    classes: int = 4


class _Block(nn.Module):
    def __init__(self, spec: CNNSpec) -> None:
        super().__init__()
        self.spec = spec
        self.conv = nn.Conv2d(spec.width, spec.width, 3, padding=1, bias=spec.conv_bias)
        self.norm = nn.BatchNorm2d(spec.width) if spec.batch_norm else nn.Identity()
        self.branch = nn.Conv2d(spec.width, spec.width, 1) if spec.concat else None
        self.merge = nn.Conv2d(2 * spec.width, spec.width, 1) if spec.concat else None
        self.act = _activation_module(spec)

    def _activate(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spec.functional:
            return self.act(x)
        if self.spec.activation == "leaky_relu":
            return F.leaky_relu(x, 0.1, inplace=self.spec.inplace)
        return F.relu(x, inplace=self.spec.inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._activate(self.norm(self.conv(x)))
        if self.branch is not None and self.merge is not None:
            out = self.merge(torch.cat([out, self._activate(self.branch(x))], dim=1))
        if self.spec.residual:
            out = out + x
        if self.spec.pool == "max":
            return F.max_pool2d(out, 2, ceil_mode=True)
        return F.avg_pool2d(out, 2, ceil_mode=True)


def _activation_module(spec: CNNSpec) -> nn.Module:
    if spec.activation == "leaky_relu":
        return nn.LeakyReLU(0.1, inplace=spec.inplace)
    if spec.activation == "relu":
        return nn.ReLU(inplace=spec.inplace)
    raise ValueError(f"activation must be 'relu' or 'leaky_relu'; got {spec.activation!r}")


class RandomCNN(nn.Module):
    """A small CNN with random weights and random BatchNorm statistics, in eval mode.

    Args:
        spec: The switches.
        seed: Seed of the random weights.
        in_channels: Input channels.
    """

    def __init__(self, spec: CNNSpec | None = None, seed: int = 0, in_channels: int = 3) -> None:
        super().__init__()
        self.spec = spec or CNNSpec()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("mean", torch.rand(1, in_channels, 1, 1, generator=generator))
        self.register_buffer("std", 0.5 + torch.rand(1, in_channels, 1, 1, generator=generator))
        self.stem = nn.Conv2d(in_channels, self.spec.width, 3, padding=1)
        self.blocks = nn.Sequential(*[_Block(self.spec) for _ in range(self.spec.blocks)])
        self.head = nn.Linear(self.spec.width, self.spec.classes)
        _randomise(self, generator)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits (N, classes)."""
        if self.spec.normalise:
            x = (x - self.mean) / self.std
        x = self.blocks(F.relu(self.stem(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _randomise(model: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                scale = 0.6 if name == "weight" else 0.3
                param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * scale)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(
                    torch.rand(module.num_features, generator=generator) - 0.5
                )
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
                module.weight.add_(1.0)
            elif isinstance(module, _NORMS) and getattr(module, "weight", None) is not None:
                module.weight.add_(1.0)


_NORMS = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm2d,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def randomise_statistics_and_biases(
    model: nn.Module, seed: int = 1, noise: float = 0.0
) -> nn.Module:
    """``model`` with random BatchNorm statistics, biases and norm weights, as trained ones are.

    Torchvision initialises biases to 0, BatchNorm statistics to (0, 1) and norm weights to 1, so
    an untrained model has no bias for CTC to share. Running means are drawn from [-0.2, 0.2),
    variances from [0.5, 1.5), biases from [-0.2, 0.2) and 1-d weights from [0.8, 1.2), in place,
    from a generator seeded by ``seed``. With ``noise``, every parameter is then moved by
    Gaussian noise of that standard deviation (timm starts heads and layer scales at zero, which
    would leave every image with the same logits).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if (
                isinstance(module, nn.modules.batchnorm._BatchNorm)
                and module.running_mean is not None
            ):
                size = module.num_features
                module.running_mean.copy_(torch.rand(size, generator=generator) * 0.4 - 0.2)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            for name, param in module.named_parameters(recurse=False):
                if name == "bias" or (name == "weight" and param.dim() == 1):
                    drawn = torch.rand(param.shape, generator=generator) * 0.4 - 0.2
                    param.copy_(drawn + (1.0 if name == "weight" else 0.0))
        if noise:
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * noise)
    return model


def random_partition(
    height: int, width: int, features: int, seed: int = 0, batch: int = 1, spread: int = 3
) -> torch.Tensor:
    """A random integer feature mask (batch, 1, H, W) with non-contiguous ids.

    Every one of ``features`` ids (``spread * k + 1``) covers at least one pixel of each example.

    Raises:
        ValueError: when the features do not fit the grid, or ``spread`` is 0 (every id would
            be 1: a single feature).
    """
    if not 1 <= features <= height * width:
        raise ValueError(
            f"cannot place {features} features on a {height}x{width} grid: give 1 to "
            f"{height * width}"
        )
    if spread == 0:
        raise ValueError("spread must be non-zero: ids spread * k + 1 would all be 1")
    generator = torch.Generator().manual_seed(seed)
    masks = []
    for _ in range(batch):
        labels = torch.randint(0, features, (height * width,), generator=generator)
        labels[torch.randperm(height * width, generator=generator)[:features]] = torch.arange(
            features
        )
        masks.append(labels.view(1, height, width))
    return torch.stack(masks) * spread + 1


@dataclass(frozen=True)
class ModernSpec:
    """The switches of a `RandomModernCNN` (EfficientNet / ConvNeXt / RegNetY parts).

    Attributes:
        width: Channels between blocks.
        expansion: Channel factor of each block's inverted bottleneck.
        blocks: Number of blocks.
        norm: ``"batch"``, ``"layer"`` (over channels, on a channels-last permute, as in
            ConvNeXt), ``"group"``, ``"instance"`` or ``"rms"`` (channels-last).
        activation: ``"silu"``, ``"gelu"``, ``"hardswish"``, ``"relu"`` or ``"swish-by-hand"``
            (``x * torch.sigmoid(x)`` written out).
        squeeze: Squeeze-excitation gate: ``"none"``, ``"sigmoid"`` or ``"hardsigmoid"``.
        layer_scale: Multiply each block's branch by a learned per-channel scale.
        functional: Call normalisations and activations as ``torch.nn.functional`` functions.
        head_norm: A LayerNorm on the pooled features before the classifier (ConvNeXt).
        classes: Number of outputs.
    """

    width: int = 4
    expansion: int = 2
    blocks: int = 2
    norm: str = "layer"
    activation: str = "silu"
    squeeze: str = "sigmoid"
    layer_scale: bool = True
    functional: bool = False
    head_norm: bool = False
    classes: int = 4


class _Linearisable(nn.Module):
    """A part with two forwards: the model's, and its plain-torch linearisation at its gates.

    With ``linearised`` on, every gate (activation ratio, normalisation statistics,
    squeeze-excitation scale) is computed from the input and detached, so autograd gives the
    derivative of the network linearised at its gates: an independent re-implementation of
    what CTC's ``"none"`` mode computes.
    """

    linearised = False


class _Norm(_Linearisable):
    def __init__(self, kind: str, channels: int, functional: bool) -> None:
        super().__init__()
        self.kind, self.functional = kind, functional
        if kind == "batch":
            self.module: nn.Module = nn.BatchNorm2d(channels)
        elif kind == "layer":
            self.module = nn.LayerNorm(channels)
        elif kind == "group":
            self.module = nn.GroupNorm(2 if channels % 2 == 0 else 1, channels)
        elif kind == "instance":
            self.module = nn.InstanceNorm2d(channels, affine=True)
        elif kind == "rms":
            self.module = nn.RMSNorm(channels, eps=1e-5)
        else:
            raise ValueError(f"unknown norm {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        channels_last = self.kind in ("layer", "rms") and x.dim() == 4
        if channels_last:
            x = x.permute(0, 2, 3, 1)
        if self.linearised:
            y = self._linearised(x)
        elif not self.functional or self.kind == "batch":
            y = m(x)
        elif self.kind == "layer":
            y = F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)
        elif self.kind == "group":
            y = F.group_norm(x, m.num_groups, m.weight, m.bias, m.eps)
        elif self.kind == "instance":
            y = F.instance_norm(x, weight=m.weight, bias=m.bias, eps=m.eps)
        else:
            y = F.rms_norm(x, m.normalized_shape, m.weight, m.eps)
        return y.permute(0, 3, 1, 2) if channels_last else y

    def _linearised(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if self.kind == "batch":
            return m(x)
        if self.kind in ("layer", "rms"):
            dims, shape, groups = (-1,), (-1,), x
        elif self.kind == "group":
            groups = x.unflatten(1, (m.num_groups, -1))
            dims, shape = (2, 3, 4), (-1, 1, 1)
        else:
            dims, shape, groups = (2, 3), (-1, 1, 1), x
        if self.kind == "rms":
            centred = groups
            spread = groups.square().mean(dim=dims, keepdim=True)
        else:
            centred = groups - groups.mean(dim=dims, keepdim=True)
            spread = groups.var(dim=dims, correction=0, keepdim=True)
        y = (centred / torch.sqrt(spread + m.eps).detach()).reshape(x.shape)
        y = y * m.weight.view(shape)
        bias = getattr(m, "bias", None)
        return y if bias is None else y + bias.view(shape)


class _Activation(_Linearisable):
    _MODULES = {"silu": nn.SiLU, "gelu": nn.GELU, "hardswish": nn.Hardswish, "relu": nn.ReLU}
    _FUNCTIONS = {"silu": F.silu, "gelu": F.gelu, "hardswish": F.hardswish, "relu": F.relu}

    def __init__(self, kind: str, functional: bool) -> None:
        super().__init__()
        if kind not in (*self._MODULES, "swish-by-hand"):
            raise ValueError(f"unknown activation {kind!r}")
        self.kind, self.functional = kind, functional
        self.module = self._MODULES[kind]() if kind in self._MODULES else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swish-by-hand":
            return x * (torch.sigmoid(x).detach() if self.linearised else torch.sigmoid(x))
        if self.linearised:  # the rescale gate y / x (0 where x = 0), held fixed
            y = self._FUNCTIONS[self.kind](x)
            nonzero = x != 0
            return x * torch.where(nonzero, y / torch.where(nonzero, x, 1.0), 0.0).detach()
        return self._FUNCTIONS[self.kind](x) if self.functional else self.module(x)


class _SqueezeExcite(_Linearisable):
    def __init__(self, channels: int, gate: str) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, max(1, channels // 2), 1)
        self.expand = nn.Conv2d(max(1, channels // 2), channels, 1)
        self.gate = nn.Sigmoid() if gate == "sigmoid" else nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))
        return x * (scale.detach() if self.linearised else scale)


class _ModernBlock(nn.Module):
    def __init__(self, spec: ModernSpec) -> None:
        super().__init__()
        from torchvision.ops import StochasticDepth

        hidden = spec.width * spec.expansion
        self.expand = nn.Conv2d(spec.width, hidden, 1)
        self.norm1 = _Norm(spec.norm, hidden, spec.functional)
        self.act1 = _Activation(spec.activation, spec.functional)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act2 = _Activation(spec.activation, spec.functional)
        self.squeeze = None if spec.squeeze == "none" else _SqueezeExcite(hidden, spec.squeeze)
        self.project = nn.Conv2d(hidden, spec.width, 1, bias=False)
        self.norm2 = _Norm(spec.norm, spec.width, spec.functional)
        self.scale = nn.Parameter(torch.ones(spec.width, 1, 1)) if spec.layer_scale else None
        self.drop_path = StochasticDepth(0.2, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act2(self.depthwise(self.act1(self.norm1(self.expand(x)))))
        if self.squeeze is not None:
            h = self.squeeze(h)
        h = self.norm2(self.project(h))
        if self.scale is not None:
            h = self.scale * h
        return x + self.drop_path(h)


class RandomModernCNN(nn.Module):
    """A small modern CNN with random weights, in eval mode: the parts CTC's newer gates cover.

    Inverted-residual blocks (1x1 expansion, depthwise 3x3, squeeze-excitation, 1x1
    projection) with a choice of normalisation and activation, layer scale and stochastic depth
    (the identity in eval mode), in the style of EfficientNet, RegNetY and ConvNeXt. Every
    normalisation's affine parameters and running statistics are random, so biases matter.

    [`linearised`][ctc_plugin.testing.RandomModernCNN.linearised] switches the model to a
    plain-torch re-implementation of the network linearised at its gates (every gate computed and
    detached), whose gradient x input is what CTC's ``"none"`` mode must give.

    Args:
        spec: The switches.
        seed: Seed of the random weights.
        in_channels: Input channels.
    """

    def __init__(self, spec: ModernSpec | None = None, seed: int = 0, in_channels: int = 3):
        super().__init__()
        self.spec = spec or ModernSpec()
        generator = torch.Generator().manual_seed(seed)
        self.stem = nn.Conv2d(in_channels, self.spec.width, 3, padding=1)
        self.stem_norm = _Norm(self.spec.norm, self.spec.width, self.spec.functional)
        self.stem_act = _Activation(self.spec.activation, self.spec.functional)
        self.blocks = nn.Sequential(*[_ModernBlock(self.spec) for _ in range(self.spec.blocks)])
        self.head_norm = (
            _Norm("layer", self.spec.width, self.spec.functional) if self.spec.head_norm else None
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(self.spec.width, self.spec.classes)
        _randomise(self, generator)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits (N, classes)."""
        x = self.blocks(self.stem_act(self.stem_norm(self.stem(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if self.head_norm is not None:
            x = self.head_norm(x)
        return self.head(self.dropout(x))

    @contextmanager
    def linearised(self) -> Iterator[RandomModernCNN]:
        """Run the plain-torch linearisation at the gates inside the context."""
        parts = [m for m in self.modules() if isinstance(m, _Linearisable)]
        for part in parts:
            part.linearised = True
        try:
            yield self
        finally:
            for part in parts:
                part.linearised = False


@dataclass(frozen=True)
class TransformerSpec:
    """The switches of a `RandomTransformer` (ViT / Swin parts).

    Attributes:
        dim: Token width.
        heads: Attention heads.
        depth: Number of blocks.
        patch: Side of the square patches the convolutional stem cuts.
        pre_norm: LayerNorm before attention and MLP (ViT); off: after the residual (post-norm).
        class_token: Prepend a learned class token and classify from it (else: mean token).
        attention: ``"sdpa"`` (``scaled_dot_product_attention`` on q, k, v split by a permute,
            as Swin splits them), ``"mha"`` (``nn.MultiheadAttention``, batch first),
            ``"explicit"`` (``q @ k^T``, ``softmax``, ``@ v`` written out, q, k, v by
            ``chunk``), ``"einsum"`` (the same with ``einsum``, as MaxViT) or ``"window"``
            (Swin's shifted windows: ``roll``, window partition, relative position bias and
            the shifted-window mask; needs no class token).
        mlp_ratio: MLP width factor.
        classes: Number of outputs.
    """

    dim: int = 8
    heads: int = 2
    depth: int = 2
    patch: int = 2
    pre_norm: bool = True
    class_token: bool = True
    attention: str = "sdpa"
    mlp_ratio: int = 2
    classes: int = 4


class _Attention(_Linearisable):
    def __init__(self, spec: TransformerSpec, window: int = 2, shift: int = 0) -> None:
        super().__init__()
        self.spec, self.window, self.shift = spec, window, shift
        if spec.attention == "mha":
            self.mha = nn.MultiheadAttention(spec.dim, spec.heads, batch_first=True)
        else:
            self.qkv = nn.Linear(spec.dim, 3 * spec.dim)
            self.proj = nn.Linear(spec.dim, spec.dim)
        if spec.attention == "window":
            self.relative_bias = nn.Parameter(torch.zeros(spec.heads, window**2, window**2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = self.spec.attention
        if kind == "mha":
            if not self.linearised:
                return self.mha(x, x, x, need_weights=False)[0]
            return self._mha_linearised(x)
        if kind == "window":
            return self._windowed(x)
        batch, tokens, dim = x.shape
        heads = self.spec.heads
        if kind == "sdpa":
            qkv = self.qkv(x).reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            if self.linearised:
                out = self._probabilities(q, k) @ v
            else:
                out = F.scaled_dot_product_attention(q, k, v)
        else:
            q, k, v = (
                t.reshape(batch, tokens, heads, dim // heads).transpose(1, 2)
                for t in self.qkv(x).chunk(3, dim=-1)
            )
            out = self._attend(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))

    def _probabilities(
        self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.spec.attention == "einsum":
            scores = torch.einsum("bhid,bhjd->bhij", q, k) / q.shape[-1] ** 0.5
        else:
            scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        if bias is not None:
            scores = scores + bias
        probabilities = scores.softmax(dim=-1)
        return probabilities.detach() if self.linearised else probabilities

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        probabilities = self._probabilities(q, k, bias)
        if self.spec.attention == "einsum":
            return torch.einsum("bhij,bhjd->bhid", probabilities, v)
        return probabilities @ v

    def _mha_linearised(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        heads, mha = self.spec.heads, self.mha
        q, k, v = (
            t.reshape(batch, tokens, heads, dim // heads).transpose(1, 2)
            for t in F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        )
        out = (self._probabilities(q, k) @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return mha.out_proj(out)

    def _windowed(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        side, w, heads = int(tokens**0.5), self.window, self.spec.heads
        grid = x.view(batch, side, side, dim)
        if self.shift:
            grid = torch.roll(grid, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = grid.view(batch, side // w, w, side // w, w, dim).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(-1, w * w, dim)  # (batch * windows, tokens per window, dim)
        qkv = self.qkv(windows).reshape(windows.shape[0], w * w, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5 + self.relative_bias
        if self.shift:  # tokens that wrapped around attend only to their own side
            windows_per_image = (side // w) ** 2
            scores = scores.view(batch, windows_per_image, heads, w * w, w * w)
            scores = scores + self._shift_mask(side).to(x.dtype)[None, :, None]
            scores = scores.view(-1, heads, w * w, w * w)
        probabilities = scores.softmax(dim=-1)
        if self.linearised:
            probabilities = probabilities.detach()
        out = (probabilities @ v).transpose(1, 2).reshape(-1, w * w, dim)
        out = self.proj(out).view(batch, side // w, side // w, w, w, dim)
        grid = out.permute(0, 1, 3, 2, 4, 5).reshape(batch, side, side, dim)
        if self.shift:
            grid = torch.roll(grid, shifts=(self.shift, self.shift), dims=(1, 2))
        return grid.reshape(batch, tokens, dim)

    def _shift_mask(self, side: int) -> torch.Tensor:
        """(windows, t, t): -100 between tokens of a window that came from different sides."""
        w = self.window
        region = torch.zeros(side, side)
        edge = side - self.shift
        region[edge:, :] += 1
        region[:, edge:] += 2
        windows = region.view(side // w, w, side // w, w).permute(0, 2, 1, 3).reshape(-1, w * w)
        return (windows[:, :, None] != windows[:, None, :]).float() * -100.0


class _TransformerBlock(nn.Module):
    def __init__(self, spec: TransformerSpec, shift: int = 0) -> None:
        super().__init__()
        self.spec = spec
        self.norm1 = _Norm("layer", spec.dim, functional=False)
        self.attention = _Attention(spec, shift=shift)
        self.norm2 = _Norm("layer", spec.dim, functional=True)
        self.fc1 = nn.Linear(spec.dim, spec.mlp_ratio * spec.dim)
        self.act = _Activation("gelu", functional=False)
        self.fc2 = nn.Linear(spec.mlp_ratio * spec.dim, spec.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mlp = lambda t: self.fc2(self.act(self.fc1(t)))  # noqa: E731
        if self.spec.pre_norm:
            x = x + self.attention(self.norm1(x))
            return x + mlp(self.norm2(x))
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + mlp(x))


class RandomTransformer(nn.Module):
    """A small vision transformer with random weights, in eval mode.

    A convolutional patch embedding, an optional class token, learned position embeddings, pre- or
    post-norm blocks of attention (written five ways, see
    [`TransformerSpec`][ctc_plugin.testing.TransformerSpec]) and a GELU MLP, a final LayerNorm and a
    linear head. `linearised` switches it to its plain-torch linearisation at its gates (attention
    probabilities, LayerNorm statistics and GELU ratios computed and detached), whose gradient x
    input CTC's ``"none"`` mode must give.

    Args:
        spec: The switches.
        seed: Seed of the random weights.
        size: Side of the (square) input images.
        in_channels: Input channels.
    """

    def __init__(
        self,
        spec: TransformerSpec | None = None,
        seed: int = 0,
        size: int = 8,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.spec = spec = spec or TransformerSpec()
        if spec.attention == "window" and spec.class_token:
            raise ValueError("windowed attention needs class_token=False")
        generator = torch.Generator().manual_seed(seed)
        tokens = (size // spec.patch) ** 2
        self.embed = nn.Conv2d(in_channels, spec.dim, spec.patch, spec.patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, spec.dim)) if spec.class_token else None
        self.position = nn.Parameter(torch.zeros(1, tokens + int(spec.class_token), spec.dim))
        self.blocks = nn.Sequential(
            *[
                _TransformerBlock(spec, shift=1 if spec.attention == "window" and i % 2 else 0)
                for i in range(spec.depth)
            ]
        )
        self.norm = _Norm("layer", spec.dim, functional=False)
        self.head = nn.Linear(spec.dim, spec.classes)
        _randomise(self, generator)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits (N, classes)."""
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        if self.class_token is not None:
            tokens = torch.cat([self.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = self.norm(self.blocks(tokens + self.position))
        pooled = tokens[:, 0] if self.class_token is not None else tokens.mean(dim=1)
        return self.head(pooled)

    linearised = RandomModernCNN.linearised
