"""CTC is exact on the timm architectures users explain, built as timm builds them.

One small model per mechanism that older networks lack (squeeze-excitation and its variants,
split attention, GRN, StarReLU, ResMLP's affine, gated products, SwiGLU with rotary embeddings,
registers, relative position bias, cosine attention, cross-covariance attention,
repeated global queries, mask-unit attention, factorised and linear attention,
modulation, additive and partial-channel attention, a state-space mixer, gated
positional attention, attention in ResNet bottlenecks, lambda layers, cascaded group attention;
with make test-slow also outlook attention, halo attention, SAM 2's pooled windows, LSTMs
and unfold), with
random weights (statistics, biases and norm weights drawn, every parameter moved by noise, so
no logit is the bias alone), in float64 on a 2 x 2 grid: ``"proportional"`` scores add up to
the target logit, the fast pass equals the spec, and one image alone gives its scores in the
batch. The full table of timm families is ``docs/scripts/timm_support.py`` (page "Choose a
method"), where CTC is exact on every family but CSATv2 (refused: its spatial attention pairs
the images of a batch). iFormer's sigmoid values are split into sigmoid(0), a shared bias, and
a bounded rescale gate: its scores stay near 1 and add up to float64 rounding.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.model_families import timm_classifier

from .exactness import assert_equals_the_spec, assert_proportional_adds_up

timm = pytest.importorskip("timm")

#: model name -> what it brings
MODELS = {
    "seresnet18": "squeeze-excitation",
    "ecaresnet26t": "ECA: conv1d over pooled channels",
    "skresnet18": "selective kernels: softmax over branches",
    "resnest14d": "split attention",
    "ghostnetv2_100": "DFC attention: a sigmoid gate, upsampled",
    "convnextv2_atto": "global response normalisation (addcmul)",
    "gmlp_s16_224": "spatial gating: a product of two halves",
    "starnet_s1": "star operation: a product of two branches",
    "eva02_tiny_patch14_224": "SwiGLU, rotary position embedding",
    "vit_small_patch14_reg4_dinov2": "registers, layer scale",
    "swinv2_tiny_window8_256": "cosine attention",
    "xcit_nano_12_p16_224": "cross-covariance attention",
    "hiera_tiny_224": "mask-unit attention",
    "levit_128s": "attention bias, hard-swish",
    "mobilevitv2_050": "separable linear attention",
    "coat_lite_tiny": "factorised attention: q @ (softmax(k)^T v), a product of two signals",
    "efficientvit_b0": "linear attention: ReLU kernels, ones padded in, divided by a normaliser",
    "iformer_t": "modulation attention: sigmoid values, a sigmoid gate after",
    "efficientvim_m1": "hidden-state mixer: a softmax over the tokens, matrix products",
    "convit_tiny": "gated positional self-attention: a sigmoid gate mixing two softmaxes",
    "botnet26t_256": "self-attention with relative position logits in a ResNet bottleneck",
}

#: models that compute in float32 inside whatever the input's dtype (their scores add up to
#: that precision): model name -> relative tolerance
FLOAT32_INSIDE = {"efficientvit_b0": 1e-6}  # LiteMLA's attention runs .float()

#: larger models of the same checks, and families whose mechanism a family above shares
#: (addcmul, products of two branches, softmax(k)^T v, attention on part of the channels), run
#: by make test-slow
SLOW = {
    "poolformerv2_s12": "StarReLU: s * relu(x) ** 2 + b",
    "resmlp_12_224": "affine normalisation (addcmul)",
    "mambaout_femto": "gated CNN",
    "gcvit_xxtiny": "global query repeated per window",
    "swiftformer_xs": "additive attention of normalised queries and keys",
    "shvit_s1": "single-head attention on part of the channels",
    "lambda_resnet26t": "lambda layers: softmax(k)^T v applied to the queries",
    "efficientvit_m0": "cascaded group attention",
    "eca_nfnet_l0": "weight standardisation, scaled activations",
    "beit_base_patch16_224": "relative position bias",
    "volo_d1_224": "outlook attention: unfolded windows folded back",
    "halonet26t": "halo attention, whose queries can weigh the zero padding alone",
    "sam2_hiera_tiny": "max pooling of queries in windows merged into the batch",
    "sequencer2d_s": "bidirectional LSTMs over rows and columns",
    "tnt_s_patch16_224": "pixel embedding by unfold",
}

SIZE = 64

#: models built for another input side (HaloNet's blocks must divide its maps)
SIZES = {"halonet26t": 256}


def _inputs(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(3)).double()
    rows = torch.arange(size) * 2 // size
    return x, (rows.view(1, 1, -1, 1) * 2 + rows.view(1, 1, 1, -1))


@pytest.mark.parametrize(
    "name", [*MODELS, *(pytest.param(name, marks=pytest.mark.slow) for name in SLOW)]
)
def test_proportional_adds_up_and_equals_the_spec(name: str) -> None:
    size = SIZES.get(name, SIZE)
    model, (x, mask) = timm_classifier(name, size), _inputs(size)
    relative = FLOAT32_INSIDE.get(name, 1e-10)
    scores = assert_proportional_adds_up(model, x, mask, 1, relative=relative)
    assert scores.scores.std() > 1e-3  # the features differ: no logit is the bias alone
    assert_equals_the_spec(model, x, mask, 1, scores, relative=relative * 10)
    alone = assert_proportional_adds_up(model, x[1:], mask, 1, relative=relative)
    torch.testing.assert_close(alone.scores, scores.scores[1:], rtol=relative * 10, atol=1e-12)
