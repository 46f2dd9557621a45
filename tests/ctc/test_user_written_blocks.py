"""CTC on timm-style blocks written by hand: exact, or refused by name with the model untouched.

Each block sits between a biased stem and a linear head. Exact means: ``"proportional"`` scores
add up to the target logit (float64, 1e-10 relative), equal the spec's (``SPEC``: no speed-up)
and the float32 model's scores to rounding. A refused block names the operation and its module,
and leaves no hook, parameter, ``requires_grad`` flag or training flag changed.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin import CTC

from .exactness import assert_equals_the_spec, assert_proportional_adds_up, assert_refused

C, HEADS = 8, 2


class SqueezeExcite(nn.Module):
    def __init__(self, pool: str, gate) -> None:
        super().__init__()
        self.pool, self.gate = pool, gate
        self.reduce, self.expand = nn.Conv2d(C, 4, 1), nn.Conv2d(4, C, 1)
        self.fc1, self.fc2 = nn.Linear(C, 4), nn.Linear(4, C)

    def forward(self, x):
        if self.pool == "linear":
            s = self.fc2(F.relu(self.fc1(x.mean((2, 3)))))
            return x * self.gate(s).view(x.shape[0], -1, 1, 1)
        s = x.mean((2, 3), keepdim=True) if self.pool == "mean" else F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.expand(F.silu(self.reduce(s))))


class ChannelsLast(nn.Module):
    def __init__(self, norm) -> None:
        super().__init__()
        self.norm = norm
        self.gamma = nn.Parameter(torch.rand(C))

    def forward(self, x):
        y = x.permute(0, 2, 3, 1)
        y = self.norm(y).mul_(self.gamma)  # timm's in-place layer scale
        return x + y.permute(0, 3, 1, 2)


class Residual(nn.Module):
    def __init__(self, activation, drop_path: bool = False) -> None:
        super().__init__()
        self.conv, self.activation = nn.Conv2d(C, C, 3, padding=1), activation
        self.drop_path = drop_path

    def forward(self, x):
        y = self.activation(self.conv(x))
        if self.drop_path and self.training:  # timm's drop_path: the identity in eval mode
            y = y * x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(0.9) / 0.9
        x = x.clone()
        x += y
        return x


class Split(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = nn.Conv2d(C // 2, C // 2, 1), nn.Conv2d(C // 2, C // 2, 3, padding=1)

    def forward(self, x):
        a, b = x.chunk(2, 1) if self.how == "chunk" else x.split([C // 2, C // 2], 1)
        return torch.cat([self.a(a), F.relu_(self.b(b))], 1)


class Tokens(nn.Module):
    """Attention over the stem's 8x8 positions, ``kind`` chooses how it is written."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.token = nn.Parameter(torch.randn(1, 1, C))
        self.position = nn.Parameter(torch.randn(1, 65, C))
        self.norm, self.qkv, self.out = nn.LayerNorm(C), nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.mha = nn.MultiheadAttention(C, HEADS, batch_first="batch_first" in kind)
        self.table = nn.Parameter(torch.randn(9, HEADS))
        self.register_buffer("index", torch.randint(0, 9, (65, 65)))
        self.register_buffer("mask", torch.randn(65, 65))

    def forward(self, x):
        b, c, h, w = x.shape
        t = torch.cat([self.token.expand(b, -1, -1), x.flatten(2).transpose(1, 2)], 1)
        t = t + self.position
        u = self.norm(t)
        if self.kind.startswith("mha"):
            if "batch_first" not in self.kind:
                u = u.transpose(0, 1)
            y = self.mha(u, u, u, need_weights="weights" in self.kind)[0]
            y = y if "batch_first" in self.kind else y.transpose(0, 1)
        else:
            q, k, v = self.qkv(u).reshape(b, 65, 3, HEADS, -1).permute(2, 0, 3, 1, 4).unbind(0)
            if self.kind == "sdpa":
                y = F.scaled_dot_product_attention(q, k, v)
            elif self.kind == "sdpa causal":
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif self.kind == "sdpa float mask":
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
            elif self.kind == "einsum":
                a = torch.einsum("bhqd,bhkd->bhqk", q, k).mul(q.shape[-1] ** -0.5).softmax(-1)
                y = torch.einsum("bhqk,bhkd->bhqd", a, v)
            else:  # explicit, with a relative position bias table
                bias = self.table[self.index.view(-1)].view(65, 65, -1).permute(2, 0, 1)
                a = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]) + bias.unsqueeze(0)
                y = a.softmax(-1) @ v
            y = y.transpose(1, 2).reshape(b, 65, c)
        t = t + self.out(y)
        pooled = t[:, 1:].mean(1) if "mean" in self.kind else t[:, 0]
        return pooled[:, :, None, None].expand(b, c, h, w)


class Window(nn.Module):
    """Swin: shifted 4x4 windows with torch.roll, a window partition by reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(C, 3 * C), nn.Linear(C, C)

    def forward(self, x):
        b, c, h, w = x.shape
        t = torch.roll(x.permute(0, 2, 3, 1), (-2, -2), (1, 2))
        t = t.view(b, 2, 4, 2, 4, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 16, c)
        q, k, v = self.qkv(t).reshape(-1, 16, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        y = ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(-1, 16, c)
        y = self.out(y).view(b, 2, 2, 4, 4, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return x + torch.roll(y, (2, 2), (1, 2)).permute(0, 3, 1, 2)


class Net(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(3, C, 3, padding=1), block, nn.Linear(C, 4)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def _hard_sigmoid(t):
    return F.relu6(t + 3.0) / 6.0


EXACT = {
    "SE mean, sigmoid": lambda: SqueezeExcite("mean", torch.sigmoid),
    "SE adaptive pool, hardsigmoid": lambda: SqueezeExcite("adaptive", F.hardsigmoid),
    "SE adaptive pool, relu6 by hand": lambda: SqueezeExcite("adaptive", _hard_sigmoid),
    "SE linear, sigmoid": lambda: SqueezeExcite("linear", torch.sigmoid),
    "SE mean, tanh": lambda: SqueezeExcite("mean", lambda t: torch.tanh(t) * 0.5 + 0.5),
    "LayerNorm channels-last": lambda: ChannelsLast(nn.LayerNorm(C)),
    "F.layer_norm channels-last": lambda: ChannelsLast(lambda t: F.layer_norm(t, (C,))),
    "RMSNorm": lambda: ChannelsLast(nn.RMSNorm(C, eps=1e-6)),
    "GroupNorm": lambda: Residual(nn.GroupNorm(2, C)),
    "GELU, drop path in eval": lambda: Residual(nn.GELU(), drop_path=True),
    "SiLU in place": lambda: Residual(nn.SiLU(inplace=True)),
    "Mish": lambda: Residual(nn.Mish()),
    "hard swish by hand": lambda: Residual(lambda t: t * F.relu6(t + 3.0) / 6.0),
    "ConvNeXt LayerNorm by hand": lambda: Residual(
        lambda t: (
            (t - t.mean(1, keepdim=True))
            / torch.sqrt((t - t.mean(1, keepdim=True)).pow(2).mean(1, keepdim=True) + 1e-6)
        )
    ),
    "SE sigmoid_ in place": lambda: Residual(lambda t: t * t.mean((2, 3), keepdim=True).sigmoid_()),
    "divided by its norm": lambda: Residual(lambda t: t / t.norm(dim=1, keepdim=True)),
    "chunk": lambda: Split("chunk"),
    "split": lambda: Split("split"),
    **{
        f"attention {kind}": (lambda kind=kind: Tokens(kind))
        for kind in ("sdpa", "sdpa causal mean", "sdpa float mask", "einsum", "explicit")
    },
    **{
        f"attention {kind}": (lambda kind=kind: Tokens(kind))
        for kind in ("mha", "mha weights", "mha batch_first", "mha batch_first weights mean")
    },
    "Swin window attention": Window,
}


def _model(block) -> nn.Module:
    torch.manual_seed(0)
    model = Net(block()).double().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.copy_(
                noise * 0.5 + (1.0 if name.endswith("weight") and noise.dim() == 1 else 0)
            )
    return model


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    rows = torch.arange(8) * 3 // 8
    return x, (rows.view(1, 1, -1, 1) * 3 + rows.view(1, 1, 1, -1))


@pytest.mark.parametrize("name", EXACT)
def test_proportional_scores_add_up_equal_the_spec_and_float32(name: str) -> None:
    model = _model(EXACT[name])
    x, mask = _inputs()
    scores = assert_proportional_adds_up(model, x, mask, 1, relative=1e-10)
    assert_equals_the_spec(model, x, mask, 1, scores, relative=1e-10)
    scale = scores.scores.abs().max()
    single = copy.deepcopy(model).float()
    _, in_float32 = CTC(single, bias_sharing="proportional").attribute(
        x.float(), 1, feature_mask=mask, return_feature_scores=True
    )
    assert (in_float32.scores.double() - scores.scores).abs().max() < 1e-5 * scale


class _Refused(nn.Module):
    def __init__(self, operation) -> None:
        super().__init__()
        self.operation, self.conv = operation, nn.Conv2d(C, C, 1)

    def forward(self, x):
        return self.operation(self.conv(x))


REFUSED = {
    "pow": lambda x: x.pow(x),  # an input-dependent exponent
    "exp": lambda x: x * torch.exp(x),  # no rule for the signal (only for gate tensors)
    "clamp": lambda x: x.clamp(min=x.mean(1, keepdim=True)),  # an input-dependent bound
    "max": lambda x: x * torch.sigmoid(x.max(0, keepdim=True)[0]),  # over the copies' dim
}


def _state(model: nn.Module) -> list:
    state = []
    for name, module in model.named_modules():
        hooks = [len(v) for k, v in vars(module).items() if "hooks" in k and isinstance(v, dict)]
        state.append((name, module.training, hooks))
    for name, parameter in model.named_parameters():
        state.append((name, parameter.requires_grad, parameter.detach().clone().tolist()))
    return state


@pytest.mark.parametrize("mode", ["proportional", "none"])
@pytest.mark.parametrize("operation", REFUSED)
def test_refused_blocks_name_the_operation_and_leave_the_model(operation: str, mode: str) -> None:
    model = _model(lambda: _Refused(REFUSED[operation]))
    model.stem.weight.requires_grad_(False)
    model.block.register_forward_hook(lambda module, args, output: None)
    x, mask = _inputs()
    before = _state(model)
    message = rf"\.{operation} in block \(_Refused\)"
    assert_refused(model, message, x=x, mask=mask, target=1, modes=(mode,))
    assert _state(model) == before
