"""The suite's hypothesis strategies, in one module.

Random models with the inputs, feature masks and targets CTC is tested on (small CNNs, modern
CNN blocks, transformers), binary masks for the partition tests, and the config objects of the
feature selection and the Explainer. Test modules import what they draw from here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from hypothesis import strategies as st
from torch import nn

from ctc_plugin.explainer.presets import ExplainerHyperparameters
from ctc_plugin.features import GridSegmenter, SelectionConfig
from ctc_plugin.testing import (
    CNNSpec,
    ModernSpec,
    RandomCNN,
    RandomModernCNN,
    RandomTransformer,
    TransformerSpec,
    random_partition,
)

#: Classes of the small CNNs the forward-provenance tests draw.
CLASSES = 4
#: Side of the masks the partition tests draw.
SIZE = 24


# --- Random models and CTC cases ---


def draw_case(
    draw: st.DrawFn,
    build: Callable[[int, int], nn.Module],
    classes: int,
    dtype: torch.dtype,
    sizes: tuple[int, ...] = (6, 8),
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, int]:
    """Draw (model, inputs, feature_mask, target): a seeded model, a batch and a partition.

    With per-example masks, example 0 may lack a feature the others have (its score must be 0
    and absent, the others' unchanged), and the inputs may have a black half.

    Args:
        draw: Hypothesis's draw function.
        build: ``build(seed, size)`` returns the model for inputs of side ``size``.
        classes: The model's number of outputs (the target is drawn among them).
        dtype: Model and input dtype.
        sizes: Input sides to draw from.
    """
    seed = draw(st.integers(0, 10_000))
    batch = draw(st.integers(1, 3))
    size = draw(st.sampled_from(sizes))
    features = draw(st.integers(1, 6))
    per_example = draw(st.booleans())
    model = build(seed, size).to(dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(batch, 3, size, size, generator=generator, dtype=dtype)
    mask = random_partition(size, size, features, seed=seed, batch=batch if per_example else 1)
    if per_example and batch > 1 and features > 1 and draw(st.booleans()):
        ids = mask[0].unique()
        mask = mask.clone()
        mask[0][mask[0] == ids[-1]] = ids[0]  # example 0 lacks a feature the others have
    if draw(st.booleans()):
        x[..., : size // 2] = 0  # a black half: closed gates, copies that are zero everywhere
    return model, x, mask, draw(st.integers(0, classes - 1))


@st.composite
def cnn_specs(draw: st.DrawFn, classes: int | None = None) -> CNNSpec:
    """Random small architectures covering BatchNorm, residuals, concatenation and pooling.

    ``classes`` fixes the number of outputs (default: `CNNSpec`'s).
    """
    fixed = {} if classes is None else {"classes": classes}
    return CNNSpec(
        width=draw(st.integers(2, 5)),
        blocks=draw(st.integers(1, 2)),
        batch_norm=draw(st.booleans()),
        conv_bias=draw(st.booleans()),
        residual=draw(st.booleans()),
        concat=draw(st.booleans()),
        pool=draw(st.sampled_from(["max", "avg"])),
        activation=draw(st.sampled_from(["relu", "leaky_relu"])),
        functional=draw(st.booleans()),
        inplace=draw(st.booleans()),
        normalise=draw(st.booleans()),
        **fixed,
    )


@st.composite
def cases(draw: st.DrawFn, dtype: torch.dtype = torch.float64):
    """(model, inputs, feature_mask, target) with a random net, batch and partition."""
    spec = draw(cnn_specs())
    return draw_case(draw, lambda seed, size: RandomCNN(spec, seed=seed), spec.classes, dtype)


@st.composite
def small_cnns(draw: st.DrawFn) -> RandomCNN:
    """A seeded random CNN of `cnn_specs` with `CLASSES` outputs."""
    return RandomCNN(draw(cnn_specs(classes=CLASSES)), seed=draw(st.integers(0, 100)))


@st.composite
def grid_images(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, feature_mask): 1-3 random images of 12 or 16 pixels, a 2x2 to 4x3 grid of features."""
    n, size = draw(st.integers(1, 3)), draw(st.sampled_from([12, 16]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 1000)))
    x = torch.rand(n, 3, size, size, generator=generator)
    cells = (draw(st.integers(2, 4)), draw(st.integers(2, 3)))
    return x, GridSegmenter(cells)(x)


@st.composite
def modern_specs(draw: st.DrawFn) -> ModernSpec:
    """Random small modern architectures."""
    return ModernSpec(
        width=draw(st.integers(2, 4)),
        expansion=draw(st.integers(1, 2)),
        blocks=draw(st.integers(1, 2)),
        norm=draw(st.sampled_from(["batch", "layer", "group", "instance", "rms"])),
        activation=draw(st.sampled_from(["silu", "gelu", "hardswish", "relu", "swish-by-hand"])),
        squeeze=draw(st.sampled_from(["none", "sigmoid", "hardsigmoid"])),
        layer_scale=draw(st.booleans()),
        functional=draw(st.booleans()),
        head_norm=draw(st.booleans()),
    )


@st.composite
def modern_cases(draw: st.DrawFn, dtype: torch.dtype = torch.float64):
    """(model, inputs, feature_mask, target) with a random modern net, batch and partition."""
    spec = draw(modern_specs())
    return draw_case(draw, lambda seed, size: RandomModernCNN(spec, seed=seed), spec.classes, dtype)


ATTENTION = ["sdpa", "mha", "explicit", "einsum", "window"]


@st.composite
def transformer_cases(draw: st.DrawFn, dtype: torch.dtype = torch.float64):
    """(model, inputs, feature_mask, target) with a random transformer, batch and partition."""
    attention = draw(st.sampled_from(ATTENTION))
    spec = TransformerSpec(
        dim=draw(st.sampled_from([4, 8])),
        heads=2,
        depth=draw(st.integers(1, 2)),
        patch=2,
        pre_norm=draw(st.booleans()),
        class_token=attention != "window" and draw(st.booleans()),
        attention=attention,
        mlp_ratio=draw(st.integers(1, 2)),
    )
    return draw_case(
        draw,
        lambda seed, size: RandomTransformer(spec, seed=seed, size=size),
        spec.classes,
        dtype,
        sizes=(8,),
    )


class CircularCNN(nn.Module):
    """A CNN that commutes with whole-pixel translations of its input (`circular_cases`).

    Stride-1 convolutions padded circularly (``padding_mode="circular"``), BatchNorm, an
    activation, an optional residual block and global average pooling before a linear head:
    every layer but the pooling commutes with ``torch.roll`` over the image axes, and the
    pooling forgets where a value was, so ``model(torch.roll(x, shift, (2, 3))) == model(x)``.
    """

    def __init__(
        self,
        seed: int,
        width: int,
        kernel: int,
        dilation: int,
        activation: Callable[[], nn.Module],
        residual: bool,
    ) -> None:
        super().__init__()

        def conv(inputs: int) -> nn.Conv2d:
            padding = dilation * (kernel // 2)  # the same side out as in
            return nn.Conv2d(
                inputs, width, kernel, padding=padding, dilation=dilation, padding_mode="circular"
            )

        self.stem = nn.Sequential(conv(3), nn.BatchNorm2d(width), activation())
        self.block = (
            nn.Sequential(conv(width), nn.BatchNorm2d(width), activation()) if residual else None
        )
        self.head = nn.Linear(width, CLASSES)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_((torch.rand(parameter.shape, generator=generator) * 2 - 1) * 0.6)
            for norm in self.modules():
                if isinstance(norm, nn.BatchNorm2d):
                    norm.running_mean.copy_(torch.rand(width, generator=generator) - 0.5)
                    norm.running_var.copy_(0.5 + torch.rand(width, generator=generator))
                    norm.weight.add_(1.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits (N, `CLASSES`)."""
        x = self.stem(x)
        if self.block is not None:
            x = x + self.block(x)
        return self.head(x.mean((2, 3)))


@st.composite
def circular_cases(draw: st.DrawFn, dtype: torch.dtype = torch.float64):
    """(model, inputs, feature_mask, target) with a random `CircularCNN`, batch and partition."""
    width = draw(st.integers(2, 4))
    kernel = draw(st.sampled_from([1, 3, 5]))
    dilation = draw(st.integers(1, 2))
    activation = draw(st.sampled_from([nn.ReLU, lambda: nn.LeakyReLU(0.1), nn.SiLU]))
    residual = draw(st.booleans())
    return draw_case(
        draw,
        lambda seed, size: CircularCNN(seed, width, kernel, dilation, activation, residual),
        CLASSES,
        dtype,
    )


# --- Masks ---


@st.composite
def rectangles(draw: st.DrawFn, size: int = SIZE) -> np.ndarray:
    top = draw(st.integers(0, size - 1))
    left = draw(st.integers(0, size - 1))
    bottom = draw(st.integers(top + 1, size))
    right = draw(st.integers(left + 1, size))
    mask = np.zeros((size, size), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


@st.composite
def blobs(draw: st.DrawFn, size: int = SIZE) -> np.ndarray:
    """Rectangles, optionally with a random pixel pattern cut out (possibly disconnected)."""
    mask = draw(rectangles(size))
    if draw(st.booleans()):
        seed = draw(st.integers(0, 2**16))
        mask &= np.random.default_rng(seed).random(mask.shape) > 0.3
    return mask


# --- Config objects ---


@st.composite
def selection_configs(draw: st.DrawFn) -> SelectionConfig:
    """Valid configs with every field away from its default now and then."""
    jenks_classes = draw(st.integers(2, 7))
    return SelectionConfig(
        k=draw(st.integers(1, 20)),
        grid=draw(st.integers(1, 5)),
        jenks_classes=jenks_classes,
        jenks_break=draw(st.integers(0, jenks_classes)),
        percentile=draw(st.floats(0.0, 100.0)),
        eps=draw(st.floats(0.5, 20.0)),
        min_samples=draw(st.integers(1, 30)),
        eps_step=draw(st.floats(0.0, 3.0)),
        min_samples_step=draw(st.integers(0, 3)),
        max_clusters=draw(st.integers(0, 10)),
        max_noise=draw(st.floats(0.0, 1.0)),
        max_search_steps=draw(st.integers(1, 4)),
        relevance_weight=draw(st.floats(0.0, 4.0)),
        colour_weight=draw(st.floats(0.0, 1.0)),
    )


@st.composite
def explainer_hyperparameters(draw: st.DrawFn) -> ExplainerHyperparameters:
    weight = st.floats(0.0, 3.0)
    a_min = draw(st.floats(0.0, 0.5))
    return ExplainerHyperparameters(
        lr=draw(st.floats(1e-5, 1e-1)),
        entropy_weight=draw(weight),
        tv_weight=draw(weight),
        area_weight=draw(weight),
        target_area_weight=draw(weight),
        nontarget_area_weight=draw(weight),
        a_min=a_min,
        a_max=draw(st.floats(a_min, 1.0)),
    )
