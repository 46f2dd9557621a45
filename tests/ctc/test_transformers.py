"""CTC through vision transformers: attention probabilities, LayerNorm statistics and GELU as
gates; class tokens and position embeddings as shared biases.

Random transformers (:class:`~ctc_plugin.testing.RandomTransformer`) write attention five ways
(``scaled_dot_product_attention`` after Swin's permute, ``nn.MultiheadAttention``, explicit
``q @ k^T``, ``einsum`` as in MaxViT, and Swin's shifted windows with ``roll``), pre- and
post-norm, with and without a class token. The oracle for ``"none"`` is the model's own
plain-torch linearisation at its gates. torchvision's ViT, Swin v1/v2 and MaxViT are checked
for completeness.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.attributor import CTCAttributor
from ctc_plugin.ctc.composite import CTCComposite
from ctc_plugin.ctc.errors import UnsupportedOperationError
from ctc_plugin.testing import RandomTransformer, TransformerSpec, random_partition
from tests.strategies import ATTENTION, transformer_cases

from .properties import (
    TIGHT,
    linearised_gradient_x_input,
)

MODES = ["reference", "proportional", "none"]
SETTINGS = settings(max_examples=20, deadline=None)


@settings(max_examples=15, deadline=None)
@given(transformer_cases(), st.sampled_from(MODES))
def test_zennit_attributor_equals_the_captum_class(case, mode):
    model, x, mask, target = case
    expected = CTC(model, bias_sharing=mode).attribute(x, target, feature_mask=mask)
    one_hot = torch.eye(model.spec.classes, dtype=x.dtype)[[target]]
    with CTCAttributor(model, CTCComposite(bias_sharing=mode), feature_mask=mask) as attributor:
        output, relevance = attributor(x, one_hot)
    torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(output, model(x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("attention", ATTENTION)
def test_the_linearised_oracle_is_not_the_plain_gradient(attention):
    """Attention probabilities held fixed differ from autograd: the test above can fail."""
    spec = TransformerSpec(attention=attention, class_token=attention != "window")
    model = RandomTransformer(spec, seed=2).double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    linear = linearised_gradient_x_input(model, x, 0)
    leaf = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)
    assert (linear - plain * x).abs().max() > 1e-3 * linear.abs().max()


# ---------------------------------------------------------------------------- torchvision
def randomised(model: nn.Module) -> nn.Module:
    """Random normalisation parameters, biases and zero-initialised matrices (heads)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                if name == "weight" and param.dim() == 2 and not param.any():
                    param.normal_(0.0, 0.05, generator=generator)
                if name == "bias" or (name == "weight" and param.dim() == 1):
                    noise = torch.rand(param.shape, generator=generator) * 0.4 - 0.2
                    param.copy_(noise + (1.0 if name == "weight" else 0.0))
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                size = module.num_features
                module.running_mean.copy_(torch.rand(size, generator=generator) * 0.4 - 0.2)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
    return model.eval()


def small_maxvit() -> nn.Module:
    """torchvision's MaxViT class at 32x32 with two small stages (maxvit_t needs 224x224)."""
    return torchvision.models.maxvit.MaxVit(
        input_size=(32, 32),
        stem_channels=8,
        partition_size=2,
        block_channels=[8, 16],
        block_layers=[1, 1],
        head_dim=4,
        stochastic_depth_prob=0.0,
        num_classes=10,
    )


BUILDERS = {
    "vit_b_16": (lambda: torchvision.models.vit_b_16(image_size=32), 32),
    "swin_t": (torchvision.models.swin_t, 64),
    "swin_v2_t": (torchvision.models.swin_v2_t, 64),
    "maxvit (small)": (small_maxvit, 32),
}
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}

#: builders whose "reference" pass takes seconds: make test-slow runs them (ViT-B/16 and Swin V2
#: bring no rule that the tiny models of this file, swin_t and the zoo ViT do not)
LARGER = ("vit_b_16", "swin_v2_t")


def grid(size: int, cells: int) -> torch.Tensor:
    rows = torch.arange(size) * cells // size
    return (rows.view(1, 1, -1, 1) * cells + rows.view(1, 1, 1, -1)) + 1


def _completeness(model: nn.Module, size: int, dtype: torch.dtype) -> None:
    model = randomised(model).to(dtype)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=dtype)
    _, scores = CTC(model, bias_sharing="proportional").attribute(
        x, 3, feature_mask=grid(size, 2), return_feature_scores=True
    )
    with torch.no_grad():
        logits = model(x)[:, 3]
    assert logits.abs().min() > 1e-3  # the check below is relative to a real logit
    relative = (scores.scores.sum(1) - logits).abs() / logits.abs()
    assert relative.max() < TOLERANCE[dtype], relative


@pytest.mark.parametrize(
    "dtype", [torch.float64, pytest.param(torch.float32, marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("builder", BUILDERS)
def test_torchvision_transformers_add_up_to_their_logits(builder: str, dtype: torch.dtype):
    make, size = BUILDERS[builder]
    torch.manual_seed(0)
    _completeness(make(), size, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_maxvit_t_adds_up_to_its_logits(dtype: torch.dtype):
    torch.manual_seed(0)
    _completeness(torchvision.models.maxvit_t(), 224, dtype)


@pytest.mark.parametrize(
    "builder",
    [pytest.param(name, marks=pytest.mark.slow) if name in LARGER else name for name in BUILDERS],
)
def test_reference_runs_and_the_attributor_agrees_on_torchvision(builder: str):
    make, size = BUILDERS[builder]
    torch.manual_seed(0)
    model = randomised(make()).double()
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, size, size, generator=generator, dtype=torch.float64)
    mask = grid(size, 2)
    expected = CTC(model, bias_sharing="reference").attribute(x, 3, feature_mask=mask)
    assert torch.isfinite(expected).all() and expected.abs().sum() > 0
    classes = model(x).shape[1]
    with CTCAttributor(model, CTCComposite(bias_sharing="reference"), feature_mask=mask) as attr:
        _, relevance = attr(x, torch.eye(classes, dtype=torch.float64)[[3]])
    torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------- refusals
class _Probabilities(nn.Module):
    """Returns softmax probabilities: CTC explains logits."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3 * 8 * 8, 3)

    def forward(self, x):
        return self.head(x.flatten(1)).softmax(dim=-1)


class _MixesCopies(nn.Module):
    """Multiplies over the batch dimension (a matrix product with the batch contracted)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(5, 2))

    def forward(self, x):
        return self.weight.T @ x.flatten(1)[:5].T @ torch.ones(3 * 8 * 8, 1)


@pytest.mark.parametrize(
    ("model", "pattern"),
    [
        (_Probabilities(), r"the model's output comes out of it"),
        (_MixesCopies(), r"selects or slices copies"),
    ],
)
def test_what_cannot_be_propagated_is_refused_by_name(model, pattern):
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(UnsupportedOperationError, match=pattern):
        CTC(model.eval()).attribute(x, 0, feature_mask=random_partition(8, 8, 3))
    assert torch._C._len_torch_function_stack() == 0


class _SequenceFirst(nn.Module):
    """A linear layer applied to sequence-first tokens (the copies along dim 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 2, 2)
        self.mix = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).permute(2, 0, 1)  # (T, N, D)
        mixed = self.mix(tokens)  # over D: follows the copies
        return self.head(nn.functional.layer_norm(mixed, mixed.shape[1:]).mean(0))


@pytest.mark.parametrize("entry", ["captum", "zennit"])
def test_a_rule_where_the_copies_are_off_dim_0_is_refused_by_both_entry_points(entry):
    model, x = _SequenceFirst().eval(), torch.rand(2, 3, 8, 8)
    mask = random_partition(8, 8, 3)
    with pytest.raises(UnsupportedOperationError, match="copies along dim 1"):
        if entry == "captum":
            CTC(model).attribute(x, 0, feature_mask=mask)
        else:
            CTCAttributor(model, CTCComposite(), feature_mask=mask)(x)
    assert torch._C._len_torch_function_stack() == 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class _RepeatsAndTransposes(nn.Module):
    """Repeats channels (``Tensor.repeat``) and transposes a matrix (``Tensor.t``) of tokens."""

    def __init__(self, repeat_copies: bool = False) -> None:
        super().__init__()
        self.repeat_copies = repeat_copies
        self.embed = nn.Conv2d(6, 4, 2, 2)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        doubled = x.repeat(2 if self.repeat_copies else 1, 2, 1, 1)  # (N, 6, 8, 8)
        tokens = torch.relu(self.embed(doubled)).flatten(1)  # (N, 64)
        flipped = tokens.t().contiguous().t()  # the copies to dim 1 and back
        return self.head(flipped.view(-1, 4, 16).mean(1))


def test_repeat_and_t_keep_the_copies_apart_and_repeating_the_copies_is_refused():
    torch.manual_seed(0)
    model, x = _RepeatsAndTransposes().double().eval(), torch.rand(2, 3, 8, 8).double()
    mask = random_partition(8, 8, 4)
    _, scores = CTC(model, bias_sharing="proportional").attribute(
        x, 1, feature_mask=mask, return_feature_scores=True
    )
    torch.testing.assert_close(scores.scores.sum(1), model(x)[:, 1], **TIGHT)
    with pytest.raises(UnsupportedOperationError, match="repeats the copies"):
        CTC(_RepeatsAndTransposes(repeat_copies=True).eval()).attribute(
            x.float(), 0, feature_mask=mask
        )
