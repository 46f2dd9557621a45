"""Random models composed from CTC's operation table, SAM-like masks, and the checks run on them.

`random_model(seed)` composes small image classifiers (16-32 px, a few channels) from blocks of
the table: convolutions (strided, dilated, grouped, depthwise, every padding mode, with and
without bias), BatchNorm, GroupNorm, LayerNorm (over the map and channels-last), poolings (max,
average, adaptive, ``ceil_mode``), activations (ReLU-like gates, smooth rescale gates, ones with
``f(0) != 0``), squeeze-excitation gates, residual sums, concatenations, a small attention block
(written with ``@``, ``scaled_dot_product_attention``, ``baddbmm`` or ``nn.MultiheadAttention``)
and a linear head written as ``nn.Linear``, ``@``, ``torch.mm``, ``torch.mv``, ``tensordot``,
``einsum``, ``addmm`` or with an expanded bias. `random_mask(seed, ...)` draws SAM-like feature
masks: nested and disconnected segments, one-pixel segments, a large background segment, and a
feature absent from one example of the batch.

`check_case(case)` runs every comparison of the differential fuzzing on one drawn case (float64):
each `Speedups` combination against the spec (``SPEC``), the Zennit attributor against the Captum
class, completeness of ``"proportional"`` (and ``"none"`` as gradient x input on piecewise-linear
models), batch independence, and that the model is unchanged by every call. `check_refusal(seed)`
puts an operation without a rule into a drawn model and checks the refusal.

Run many seeds with ``python -m tests.ctc.fuzz_models --seeds 0 500`` (one thread).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin import CTC, CTCAttributor, CTCComposite
from ctc_plugin.ctc.errors import UnsupportedOperationError
from ctc_plugin.ctc.speedups import DEFAULT, SPEC, Speedups

MODES = ("proportional", "reference", "none")

#: Each speed-up alone (on top of the spec), some pairs, and the default.
VARIANTS: dict[str, Speedups] = {
    "gradient shortcut": replace(SPEC, gradient_shortcut=True),
    "one example per pass": replace(SPEC, copies_per_pass=1),
    "two copies per pass": replace(SPEC, copies_per_pass=2),
    "fused, small blocks": replace(SPEC, fused_sharing=True, block_elements=64, packed_boxes=0.0),
    "fused, one block": replace(SPEC, fused_sharing=True, block_elements=None),
    "fused, packed boxes": replace(SPEC, fused_sharing=True, packed_boxes=1.0),
    "fused, no host checks": replace(
        SPEC, fused_sharing=True, block_elements=None, packed_boxes=0.0, host_checks=False
    ),
    "sparse copies": replace(SPEC, sparse_copies=True, sparse_dense_above=1.0),
    "sparse, fused, every row": replace(
        SPEC, fused_sharing=True, sparse_copies=True, sparse_dense_above=1.0, proportional_rows=1.0
    ),
    "sparse, no host checks": replace(
        SPEC, sparse_copies=True, sparse_dense_above=1.0, host_checks=False
    ),
    "default": DEFAULT,
    "default, sparse everywhere": replace(DEFAULT, sparse_dense_above=1.0),
}

#: Relative tolerance (to the largest score) of a speed-up against the spec, float64.
TIGHT = 1e-10
#: The same in float32, relative to the largest score or target logit (see `check_float32`).
FLOAT32 = 1e-4


# ---------------------------------------------------------------------------- blocks
class Block(nn.Module):
    """A block of a fuzzed model; ``label`` says what it is, for the repro."""

    label = ""

    def extra_repr(self) -> str:
        return self.label


class Conv(Block):
    """A convolution with every option of ``nn.Conv2d``."""

    def __init__(self, rng: random.Random, c: int, h: int, w: int) -> None:
        super().__init__()
        out = rng.choice([c, c + 1, 2 * c, 4]) if c > 1 else rng.choice([3, 4])
        k = rng.choice([1, 2, 3, 3, 5])
        stride = rng.choice([1, 1, 2])
        dilation = rng.choice([1, 1, 2]) if k > 1 else 1
        groups = 1
        divisors = [g for g in range(2, c + 1) if c % g == 0 and out % g == 0]
        if divisors and rng.random() < 0.4:
            groups = rng.choice(divisors)
        if rng.random() < 0.2:  # depthwise
            groups, out = c, c * rng.choice([1, 2])
        pad_choice = rng.choice(["same_k", "zero", "none", "same"])
        if dilation * (k - 1) + 1 > min(h, w):  # the kernel must fit the map
            pad_choice, dilation = "same_k", 1
        padding: int | str = (dilation * (k - 1)) // 2 if pad_choice != "none" else 0
        if pad_choice == "same" and stride == 1:
            padding = "same"
        mode = rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"])
        if mode != "zeros" and (padding == "same" or padding >= min(h, w)):
            mode = "zeros"
        bias = rng.random() < 0.7
        self.conv = nn.Conv2d(
            c, out, k, stride, padding, dilation, groups, bias=bias, padding_mode=mode
        )
        self.label = (
            f"conv {c}->{out} k{k} s{stride} d{dilation} g{groups} p{padding} {mode} bias={bias}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Norm(Block):
    """BatchNorm (eval), GroupNorm, LayerNorm over the map, or a channels-last LayerNorm."""

    def __init__(self, rng: random.Random, c: int, h: int, w: int) -> None:
        super().__init__()
        kind = rng.choice(["batch", "batch", "group", "layer", "channels_last", "instance"])
        if kind == "group":
            groups = rng.choice([g for g in range(1, c + 1) if c % g == 0])
            self.norm = nn.GroupNorm(groups, c)
        elif kind == "layer":
            self.norm = nn.LayerNorm([c, h, w])
        elif kind == "channels_last":
            self.norm = nn.LayerNorm(c)
        elif kind == "instance":
            self.norm = nn.InstanceNorm2d(c, affine=True)
        else:
            self.norm = nn.BatchNorm2d(c)
        self.kind = kind
        self.label = f"{kind} norm"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "channels_last":
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.norm(x)


#: Activations: name -> callable (modules and functions alike).
ACTIVATIONS: dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]] = {
    "relu": nn.ReLU,
    "relu_inplace": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "prelu": nn.PReLU,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "hardswish": nn.Hardswish,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "celu": lambda: nn.CELU(0.7),
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid,
    "tanh": nn.Tanh,
    "relu6": nn.ReLU6,
    "softsign": nn.Softsign,
    "elu_shifted": lambda: lambda x: F.elu(x) + 1.0,
    "erfc": lambda: torch.erfc,
    "abs": lambda: torch.abs,
    "clamp": lambda: lambda x: x.clamp(-0.5, 1.0),
    "gelu_erf": lambda: lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "swish_written": lambda: lambda x: x * torch.sigmoid(x),
}

#: Activations whose gate is autograd's derivative, so that ``"none"`` is autograd's gradient x
#: input (a clamp and ReLU6 are rescale gates, ``y / x``, where autograd's slope is 0).
PIECEWISE_LINEAR = {"relu", "relu_inplace", "leaky_relu", "prelu", "abs"}


class Act(Block):
    """One activation of `ACTIVATIONS`."""

    def __init__(self, rng: random.Random, c: int, h: int, w: int, name: str | None = None) -> None:
        super().__init__()
        self.name = name or rng.choice(sorted(ACTIVATIONS))
        made = ACTIVATIONS[self.name]()
        if isinstance(made, nn.Module):
            self.act = made
        else:
            self.fn = made
        self.label = self.name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x) if hasattr(self, "act") else self.fn(x)


class Pool(Block):
    """Max, average or adaptive pooling."""

    def __init__(
        self, rng: random.Random, c: int, h: int, w: int, size: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        kind = rng.choice(["max", "avg", "adaptive_avg", "adaptive_max"])
        if size is not None:
            kind = rng.choice(["adaptive_avg", "adaptive_max"])
        if kind in ("max", "avg"):
            k = rng.choice([2, 3])
            stride = rng.choice([1, 2, k])
            padding = rng.choice([0, k // 2])
            ceil = rng.random() < 0.5
            if kind == "max":
                self.pool = nn.MaxPool2d(k, stride, padding, ceil_mode=ceil)
            else:
                include = rng.random() < 0.5
                self.pool = nn.AvgPool2d(
                    k, stride, padding, ceil_mode=ceil, count_include_pad=include
                )
        else:
            size = size or (max(1, h // rng.choice([2, 3])), max(1, w // rng.choice([2, 3])))
            pool = nn.AdaptiveAvgPool2d if kind == "adaptive_avg" else nn.AdaptiveMaxPool2d
            self.pool = pool(size)
        self.label = repr(self.pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


class SqueezeExcite(Block):
    """``x * gate(fc2(act(fc1(mean(x)))))``, written several ways."""

    def __init__(self, rng: random.Random, c: int, h: int, w: int) -> None:
        super().__init__()
        hidden = max(1, c // 2)
        self.conv_form = rng.random() < 0.5
        if self.conv_form:
            self.fc1, self.fc2 = nn.Conv2d(c, hidden, 1), nn.Conv2d(hidden, c, 1)
        else:
            self.fc1, self.fc2 = nn.Linear(c, hidden), nn.Linear(hidden, c)
        self.gate = rng.choice(["sigmoid", "hardsigmoid", "tanh", "sigmoid_expand"])
        self.pool = rng.choice(["mean", "amax"])
        self.label = f"SE {'conv' if self.conv_form else 'linear'} {self.gate} {self.pool}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True) if self.pool == "mean" else x.amax((2, 3), keepdim=True)
        if self.conv_form:
            s = self.fc2(F.relu(self.fc1(s)))
        else:
            s = self.fc2(F.relu(self.fc1(s.flatten(1)))).view(x.shape[0], -1, 1, 1)
        if self.gate == "hardsigmoid":
            return x * F.hardsigmoid(s)
        if self.gate == "tanh":
            return x * torch.tanh(s)
        if self.gate == "sigmoid_expand":
            return x * torch.sigmoid(s).expand_as(x)
        return x * torch.sigmoid(s)


class Residual(Block):
    """``x + body(x)`` with a same-shape body (conv, norm, act), or a projection shortcut."""

    def __init__(self, rng: random.Random, c: int, h: int, w: int) -> None:
        super().__init__()
        k = rng.choice([1, 3])
        self.body = nn.Sequential(
            nn.Conv2d(c, c, k, padding=k // 2, bias=rng.random() < 0.5),
            Norm(rng, c, h, w),
            Act(rng, c, h, w),
        )
        self.in_place = rng.random() < 0.3
        parts = f"{self.body[1].label} {self.body[2].label}"
        self.label = f"residual k{k} {parts} in_place={self.in_place}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.in_place:
            y += x
            return y
        return x + y


class Concat(Block):
    """``cat([x, conv(x)], 1)``, or with a constant channel (a bias)."""

    def __init__(self, rng: random.Random, c: int, h: int, w: int) -> None:
        super().__init__()
        self.extra = rng.choice([1, 2])
        self.conv = nn.Conv2d(c, self.extra, 3, padding=1)
        self.constant = rng.random() < 0.3
        if self.constant:
            self.channel = nn.Parameter(torch.zeros(1, 1, h, w))
        self.out = c + self.extra + self.constant
        self.label = f"concat +{self.extra} constant={self.constant}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x, self.conv(x)]
        if self.constant:
            parts.append(self.channel.expand(x.shape[0], 1, *x.shape[2:]))
        return torch.cat(parts, 1)


class Attention(Block):
    """A one-head (or two-head) attention block over the map's positions, with a residual."""

    def __init__(self, rng: random.Random, c: int, h: int, w: int) -> None:
        super().__init__()
        self.form = rng.choice(["matmul", "sdpa", "baddbmm", "mha", "einsum"])
        self.heads = 2 if (self.form == "mha" and c % 2 == 0) else 1
        if self.form == "mha":
            self.mha = nn.MultiheadAttention(c, self.heads, batch_first=True)
        else:
            self.qkv = nn.Linear(c, 3 * c)
            self.proj = nn.Linear(c, c)
        self.position = nn.Parameter(torch.zeros(1, h * w, h * w))
        self.pre_norm = rng.random() < 0.5
        if self.pre_norm:
            self.norm = nn.LayerNorm(c)
        self.label = f"attention {self.form} heads={self.heads} pre_norm={self.pre_norm}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        t = self.norm(tokens) if self.pre_norm else tokens
        if self.form == "mha":
            out, _ = self.mha(t, t, t, need_weights=False)
        else:
            q, k, v = self.qkv(t).chunk(3, dim=-1)
            scale = c**-0.5
            if self.form == "matmul":
                out = torch.softmax(q @ k.transpose(-2, -1) * scale + self.position, -1) @ v
            elif self.form == "einsum":
                logits = torch.einsum("nqc,nkc->nqk", q, k) * scale
                out = torch.einsum("nqk,nkc->nqc", logits.softmax(-1), v)
            elif self.form == "sdpa":
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.position)
            else:
                logits = torch.baddbmm(
                    self.position.expand(n, -1, -1), q, k.transpose(1, 2), alpha=scale
                )
                out = torch.bmm(logits.softmax(-1), v)
            out = self.proj(out)
        return (tokens + out).transpose(1, 2).reshape(n, c, h, w)


class Head(Block):
    """Pool, flatten, an optional hidden layer, and a linear layer written one of many ways."""

    FORMS = ("linear", "matmul", "mm", "mv", "tensordot", "einsum", "expanded", "addmm")

    def __init__(self, rng: random.Random, c: int, h: int, w: int, classes: int) -> None:
        super().__init__()
        self.pool = rng.choice(["mean", "amax", "flatten", "adaptive"])
        features = c * h * w if self.pool == "flatten" else c
        if self.pool == "adaptive":
            features = c * 4
        self.hidden = None
        if rng.random() < 0.4:
            self.hidden = nn.Linear(features, 6)
            self.act = Act(rng, 6, 1, 1)
            features = 6
        self.form = rng.choice(self.FORMS)
        self.weight = nn.Parameter(torch.zeros(classes, features))
        self.bias = nn.Parameter(torch.zeros(classes))
        if self.form == "mv":
            self.extra = nn.Parameter(torch.zeros(features))
            self.spread = nn.Parameter(torch.zeros(1, classes))
        hidden = self.act.name if self.hidden is not None else None
        self.label = f"head {self.pool} hidden={hidden} {self.form}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "mean":
            h = x.mean((2, 3))
        elif self.pool == "amax":
            h = x.amax((2, 3))
        elif self.pool == "adaptive":
            h = F.adaptive_avg_pool2d(x, 2).flatten(1)
        else:
            h = x.flatten(1)
        if self.hidden is not None:
            h = self.act(self.hidden(h))
        w, b = self.weight, self.bias
        if self.form == "linear":
            return F.linear(h, w, b)
        if self.form == "matmul":
            return h @ w.T + b
        if self.form == "mm":
            return torch.mm(h, w.t()) + b
        if self.form == "mv":
            return h @ w.T + b + torch.mv(h, self.extra).unsqueeze(1) * self.spread
        if self.form == "tensordot":
            return torch.tensordot(h, w, dims=([1], [1])) + b
        if self.form == "einsum":
            return torch.einsum("nd,kd->nk", h, w) + b
        if self.form == "expanded":
            return h @ w.T + b.expand(h.shape[0], -1)
        return torch.addmm(b, h, w.T)


class FuzzNet(nn.Module):
    """Blocks in sequence, then the head."""

    def __init__(self, blocks: list[Block], head: Head) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def describe(self) -> str:
        """One line per block."""
        return "\n".join([b.label for b in self.blocks] + [self.head.label])


def _out_shape(block: nn.Module, c: int, h: int, w: int) -> tuple[int, int, int]:
    block.eval()  # BatchNorm of a 1 x 1 map, and no statistics updated
    with torch.no_grad():
        y = block(torch.zeros(1, c, h, w))
    return y.shape[1], y.shape[2], y.shape[3]


def _randomise(model: nn.Module, generator: torch.Generator, scale: float) -> None:
    """Random weights, biases, norm affine parameters and BatchNorm statistics."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            fan = p[0].numel() if p.dim() > 1 else 1
            p.copy_(noise * (scale / math.sqrt(fan) if p.dim() > 1 else 0.3))
            if name.endswith("norm.weight") or "norm." in name and name.endswith("weight"):
                p.add_(1.0)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(
                    torch.randn(module.num_features, generator=generator) * 0.3
                )
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


@dataclass
class Case:
    """A drawn model with its inputs: everything a check needs, and how to say it."""

    seed: int
    model: FuzzNet
    x: torch.Tensor
    mask: torch.Tensor
    target: int
    baselines: torch.Tensor | float | None
    blocks: list[str] = field(default_factory=list)

    @property
    def piecewise_linear(self) -> bool:
        """Whether the model is piecewise linear (autograd's gradient is the linearised one)."""
        for module in self.model.modules():
            if isinstance(module, Act) and module.name not in PIECEWISE_LINEAR:
                return False
            if isinstance(module, (Norm, SqueezeExcite, Attention)):
                if not (isinstance(module, Norm) and module.kind == "batch"):
                    return False
        return True


BLOCKS = {
    "conv": (Conv, 4),
    "norm": (Norm, 2),
    "act": (Act, 3),
    "pool": (Pool, 1),
    "se": (SqueezeExcite, 1),
    "residual": (Residual, 1),
    "concat": (Concat, 1),
    "attention": (Attention, 2),
}


def random_model(seed: int, size: int | None = None, classes: int = 3) -> tuple[FuzzNet, int]:
    """A random model of 2-6 blocks for ``size``-px RGB images (drawn in 16-32 when ``None``)."""
    rng = random.Random(seed)
    size = size or rng.choice([16, 20, 24, 32])
    torch.manual_seed(seed)
    c, h, w = 3, size, size
    blocks: list[Block] = []
    names = list(BLOCKS)
    weights = [BLOCKS[n][1] for n in names]
    for _ in range(rng.randint(2, 6)):
        name = rng.choices(names, weights)[0]
        if name == "attention" and h * w > 64:  # first pool the map to at most 8 x 8
            pool = Pool(rng, c, h, w, size=(min(h, rng.choice([3, 4, 6, 8])),) * 2)
            blocks.append(pool)
            c, h, w = _out_shape(pool, c, h, w)
        if name == "pool" and h <= 2:
            name = "act"
        if name == "conv" and min(h, w) < 5:
            name = "norm"
        block = BLOCKS[name][0](rng, c, h, w)
        blocks.append(block)
        c, h, w = _out_shape(block, c, h, w)
    head = Head(rng, c, h, w, classes)
    model = FuzzNet(blocks, head)
    _randomise(model, torch.Generator().manual_seed(seed), scale=rng.choice([1.0, 1.5]))
    return model.double().eval(), size


# ---------------------------------------------------------------------------- masks
def random_mask(seed: int, batch: int, size: int) -> torch.Tensor:
    """A SAM-like feature mask of shape (batch or 1, 1, size, size).

    Segments are rectangles and ellipses pasted over a background (id 0 or another id), later
    ones over earlier ones (nesting), some with one id in two places (disconnected), some of
    one pixel; with a mask per example, one example may lack a feature the others have.
    """
    rng = random.Random(seed * 7 + 3)
    per_example = batch > 1 and rng.random() < 0.6
    rows = batch if per_example else 1
    ys = torch.arange(size).view(-1, 1)
    xs = torch.arange(size).view(1, -1)
    ids = rng.sample(range(1, 60), 8)
    background = rng.choice([0, 7, 99])
    masks = []
    for _ in range(rows):
        m = torch.full((size, size), background, dtype=torch.long)
        for i in range(rng.randint(1, 6)):
            fid = ids[i]
            kind = rng.choice(["rect", "ellipse", "pixel", "two"])
            if kind == "pixel":
                m[rng.randrange(size), rng.randrange(size)] = fid
                continue
            for _ in range(2 if kind == "two" else 1):
                y0, x0 = rng.randrange(size), rng.randrange(size)
                hh, ww = rng.randint(1, size // 2), rng.randint(1, size // 2)
                if kind == "ellipse":
                    inside = ((ys - y0) / hh) ** 2 + ((xs - x0) / ww) ** 2 <= 1
                else:
                    inside = (ys >= y0) & (ys < y0 + hh) & (xs >= x0) & (xs < x0 + ww)
                m[inside] = fid
        masks.append(m)
    mask = torch.stack(masks)[:, None]
    if per_example and rng.random() < 0.5:  # example 0 lacks one of the others' features
        others = set(mask[1:].unique().tolist())
        missing = [i for i in mask[0].unique().tolist() if i in others and i != background]
        if missing:
            mask[0][mask[0] == missing[0]] = background
    return mask


def random_case(seed: int) -> Case:
    """A model, a batch of 1-3 images, a mask, a target and maybe a baseline."""
    model, size = random_model(seed)
    rng = random.Random(seed * 11 + 5)
    batch = rng.randint(1, 3)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(batch, 3, size, size, generator=generator, dtype=torch.float64)
    if rng.random() < 0.2:
        x[..., : size // 2] = 0.0  # a black half: closed gates, copies zero everywhere
    mask = random_mask(seed, batch, size)
    baselines: torch.Tensor | float | None = None
    choice = rng.random()
    if choice < 0.15:
        baselines = 0.3
    elif choice < 0.25:
        baselines = torch.rand(batch, 3, size, size, generator=generator, dtype=torch.float64)
    return Case(seed, model, x, mask, rng.randrange(3), baselines)


# ---------------------------------------------------------------------------- checks
def _hook_count(module: nn.Module) -> int:
    return sum(len(v) for k, v in vars(module).items() if "hooks" in k and isinstance(v, dict))


def _state(model: nn.Module):
    """Everything a call must leave as it was: tensors bit for bit, flags and hooks."""
    tensors = {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()}
    flags = [(m.training, _hook_count(m)) for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    return tensors, flags, grads


def assert_unchanged(model: nn.Module, before) -> None:
    """The model holds what `_state` saw, and no torch function mode is left on."""
    tensors, flags, grads = _state(model)
    assert flags == before[1], "hooks or training flags changed"
    assert grads == before[2], "requires_grad changed"
    for k, v in tensors.items():
        assert torch.equal(v, before[0][k]), f"{k} changed"
    assert not torch._C._len_torch_function_stack(), "a torch function mode is left on"


def scores_of(case: Case, mode: str, speedups: Speedups | None, **options):
    """(attribution, feature scores, delta) of CTC in ``mode`` under ``speedups``."""
    ctc = CTC(case.model, bias_sharing=mode)
    if speedups is not None:
        ctc._speedups = speedups
    attribution, scores, delta = ctc.attribute(
        case.x,
        target=case.target,
        feature_mask=case.mask,
        baselines=case.baselines,
        return_feature_scores=True,
        return_convergence_delta=True,
        **options,
    )
    return attribution, scores, delta


class Discrepancy(AssertionError):
    """A check failed on a drawn case."""


def _close(actual, expected, scale, what: str, rel: float = TIGHT) -> None:
    err = float((actual - expected).abs().max()) if actual.numel() else 0.0
    if not err <= rel * scale:
        raise Discrepancy(f"{what}: {err:.3g} > {rel:g} x {scale:.3g}")


def check_float32(case: Case, mode: str, scale: float, exact: torch.Tensor) -> None:
    """In float32 the default speed-ups give float64's scores ``exact`` as closely as the spec.

    Each lies within `FLOAT32` of ``scale`` from ``exact``, or within ten times the float32
    spec's own distance. ``scale`` is the largest float64 score or target logit: a score that
    is a small part of the logit carries the rounding of the logit's terms. The gradient
    shortcut's backward pass rounds as autograd does: on a LayerNorm and attention model (seed
    8) its float32 scores lie 5.9e-6 from float64's, 1e-5 of the largest score, where
    autograd's own float32 gradient x input summed per feature lies 1.5e-5 from float64's. A
    model whose output does not depend on its input (seed 566: a mean over an instance norm)
    has scores of 1e-15 in float64, and in float32 the roundings of the norm, 7e-7 in the spec.
    """
    model32 = copy.deepcopy(case.model).float()
    baselines = case.baselines
    if isinstance(baselines, torch.Tensor):
        baselines = baselines.float()
    case32 = Case(case.seed, model32, case.x.float(), case.mask, case.target, baselines)
    before = _state(model32)
    _, spec, _ = scores_of(case32, mode, SPEC)
    own = float((spec.scores.double() - exact).abs().max())
    for name in ("default", "default, sparse everywhere"):
        _, s, _ = scores_of(case32, mode, VARIANTS[name])
        error = float((s.scores.double() - exact).abs().max())
        if not error <= max(FLOAT32 * scale, 10 * own):
            raise Discrepancy(
                f"{mode}: float32 {name} lies {error:.3g} from float64's scores, the float32 "
                f"spec {own:.3g} (the largest score or logit {scale:.3g})"
            )
    assert_unchanged(model32, before)


def check_case(
    case: Case,
    variants: dict[str, Speedups] = VARIANTS,
    zennit: bool = True,
    float32: bool = True,
) -> None:
    """Every comparison of the fuzzing on ``case``; raises `Discrepancy` naming the first."""
    model = case.model
    before = _state(model)
    with torch.no_grad():
        logits = model(case.x)
    assert_unchanged(model, before)
    for mode in MODES:
        attr, spec, delta = scores_of(case, mode, SPEC)
        assert_unchanged(model, before)
        scale = max(float(spec.scores.abs().max()), float(logits.abs().max()) * 1e-3, 1e-300)
        torch.testing.assert_close(spec.output, logits[:, case.target])
        if mode == "proportional":
            total = float(spec.scores.abs().sum(1).max() + logits[:, case.target].abs().max())
            _close(delta, torch.zeros_like(delta), total, "proportional does not add up", 1e-9)
        if mode == "none" and case.piecewise_linear and case.baselines is None:
            leaf = case.x.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(model(leaf + 0)[:, case.target].sum(), leaf)
            mask = case.mask.expand_as(case.x)
            expected = torch.stack(
                [(grad * case.x * (mask == i)).flatten(1).sum(1) for i in spec.ids.tolist()], 1
            )
            _close(spec.scores, expected, scale, "none is not gradient x input", 1e-9)
            assert_unchanged(model, before)
        for name, speedups in variants.items():
            a, s, d = scores_of(case, mode, speedups)
            assert_unchanged(model, before)
            _close(s.scores, spec.scores, scale, f"{mode}: {name} vs SPEC scores")
            _close(a, attr, scale, f"{mode}: {name} vs SPEC attributions")
            _close(d, delta, max(scale, float(delta.abs().max())), f"{mode}: {name} vs SPEC delta")
        if mode != "proportional":  # which takes every feature in one pass
            a, s, _ = scores_of(case, mode, DEFAULT, perturbations_per_eval=2)
            _close(s.scores, spec.scores, scale, f"{mode}: two features per evaluation vs SPEC")
        if mode != "reference" and float32:  # float32 "reference" is held to float64 only
            largest = max(scale, float(logits[:, case.target].abs().max()))
            check_float32(case, mode, largest, spec.scores)
        # batch independence: each example alone gives its row
        if case.x.shape[0] > 1:
            for i in range(case.x.shape[0]):
                one = replace_case(case, i)
                _, alone, _ = scores_of(one, mode, None)
                together = spec.scores[i : i + 1]
                ids = spec.ids.tolist()
                for col, fid in enumerate(alone.ids.tolist()):
                    _close(
                        alone.scores[:, col],
                        together[:, ids.index(fid)],
                        scale,
                        f"{mode}: example {i} alone vs in its batch",
                        1e-9,
                    )
        if zennit and case.baselines is None:
            classes = logits.shape[1]
            one_hot = torch.eye(classes, dtype=case.x.dtype)[[case.target] * case.x.shape[0]]
            with CTCAttributor(model, CTCComposite(bias_sharing=mode), feature_mask=case.mask) as z:
                _, relevance = z(case.x, one_hot)
            assert_unchanged(model, before)
            default, _, _ = scores_of(case, mode, None)
            _close(relevance, default, scale, f"{mode}: Zennit vs Captum", 1e-9)


def replace_case(case: Case, i: int) -> Case:
    """Example ``i`` of ``case`` alone."""
    mask = case.mask[i : i + 1] if case.mask.shape[0] > 1 else case.mask
    baselines = case.baselines
    if isinstance(baselines, torch.Tensor):
        baselines = baselines[i : i + 1]
    return Case(case.seed, case.model, case.x[i : i + 1], mask, case.target, baselines)


# ---------------------------------------------------------------------------- refusals
class _NoRule(Block):
    """An operation without a CTC rule on the signal."""

    OPS = {
        "exp": torch.exp,
        "log1p_abs": lambda x: torch.log1p(x.abs()),
        "cos": torch.cos,
        "cumsum": lambda x: x.cumsum(-1),
        "sort": lambda x: x.sort(-1).values,
    }

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.name = rng.choice(sorted(self.OPS))
        self.culprit = self.name.split("_")[0]  # the torch function a refusal must name
        self.label = f"no rule: {self.name}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.OPS[self.name](x)


def check_refusal(seed: int) -> None:
    """A drawn model with an operation without a rule is refused by both routes, model intact."""
    case = random_case(seed)
    rng = random.Random(seed * 13 + 1)
    bad = _NoRule(rng)
    where = rng.randrange(len(case.model.blocks) + 1)
    case.model.blocks.insert(where, bad)
    before = _state(case.model)
    for mode in MODES:
        try:
            scores_of(case, mode, None)
        except UnsupportedOperationError as error:
            if bad.culprit not in error.operation:  # it names the operation without a rule
                raise Discrepancy(f"unclear refusal: {error}") from error
        else:
            raise Discrepancy(f"{bad.name} at block {where} was not refused in {mode}")
        assert_unchanged(case.model, before)
        classes = 3
        one_hot = torch.eye(classes, dtype=case.x.dtype)[[case.target] * case.x.shape[0]]
        try:
            with CTCAttributor(
                case.model, CTCComposite(bias_sharing=mode), feature_mask=case.mask
            ) as z:
                z(case.x, one_hot)
        except UnsupportedOperationError:
            pass
        else:
            raise Discrepancy(f"{bad.name} at block {where} was not refused by Zennit in {mode}")
        assert_unchanged(case.model, before)


def main() -> None:
    """Run seeds from the command line; print each discrepancy with its model."""
    import argparse
    import traceback

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs=2, type=int, default=[0, 100])
    parser.add_argument("--refusals", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    failures = 0
    for seed in range(*args.seeds):
        try:
            if args.refusals:
                check_refusal(seed)
            else:
                check_case(random_case(seed))
        except Exception as error:  # noqa: BLE001 - every failure is a finding
            failures += 1
            print(f"=== seed {seed}: {type(error).__name__}: {str(error)[:600]}")
            try:
                print(random_case(seed).model.describe())
            except Exception as drawing:  # noqa: BLE001 - the generator's own failure
                print(f"(the case cannot be drawn: {drawing})")
            print("".join(traceback.format_exception(error)[-3:])[:1500])
        else:
            print(f"seed {seed} ok", flush=True)
    print(f"{failures} failures")


if __name__ == "__main__":
    main()
