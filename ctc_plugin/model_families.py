"""One small model of each timm and Hugging Face family, random weights, for tests and docs tables.

No weights can be downloaded where the tests run, and a random network whose biases are zero and
whose statistics are (0, 1) hides what CTC must share. Each builder here makes the family's
smallest model (or a tiny configuration of it), draws its statistics, biases and norm weights
([`randomise_statistics_and_biases`][ctc_plugin.testing.randomise_statistics_and_biases]) and
moves every parameter by noise, and returns it in eval mode, in float64:

- [`timm_classifier`][ctc_plugin.model_families.timm_classifier]: a model of timm (needs
  ``pip install timm``), by name;
- [`huggingface_classifier`][ctc_plugin.model_families.huggingface_classifier]: a family of
  Hugging Face ``transformers`` (``pip install transformers``), from a tiny configuration in
  ``HUGGINGFACE_FAMILIES``, wrapped as a tensor-to-logits module
  ([`HuggingFaceClassifier`][ctc_plugin.adapters.huggingface.HuggingFaceClassifier]).

``tests/ctc/test_timm_families.py``, ``tests/ctc/test_huggingface_families.py`` and the tables of
``docs/scripts/timm_support.py`` and ``docs/scripts/huggingface_support.py`` build their models
here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ctc_plugin.adapters.huggingface import HuggingFaceClassifier
from ctc_plugin.testing import randomise_statistics_and_biases

#: The classes of every model built here.
CLASSES = 5


def _randomised(model: nn.Module) -> nn.Module:
    randomise_statistics_and_biases(model, seed=1, noise=0.05)
    return model.eval().double()


def timm_classifier(name: str, size: int) -> nn.Module:
    """The timm model ``name`` for ``size`` x ``size`` images, randomised, eval mode, float64.

    Transformers are built for the size (``img_size``); convolutional networks take any size.
    """
    timm = importlib.import_module("timm")
    torch.manual_seed(0)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=CLASSES, img_size=size)
    except TypeError:  # a convolutional network: any input size
        model = timm.create_model(name, pretrained=False, num_classes=CLASSES)
    return _randomised(model)


@dataclass(frozen=True)
class HuggingFaceFamily:
    """A tiny configuration of one ``transformers`` image classification family.

    Attributes:
        model: The ``transformers`` class, ``*ForImageClassification``.
        size: The side of the square images it takes.
        brings: What the family brings that older networks lack (for the docs table).
        config: Keyword arguments of the family's configuration class (an
            ``initializer_range`` above the default 0.02 where, with random weights, the deep
            layers of the tiny model would no longer depend on the image).
    """

    model: str
    size: int
    brings: str
    config: dict[str, Any] = field(default_factory=dict)


_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 8,
}
_PYRAMID = {"hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1]}
_WINDOWS = {"patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 2]}
_LEVIT = {
    "hidden_sizes": [32, 48, 64],
    "num_attention_heads": [1, 2, 2],
    "depths": [1, 1, 1],
    "initializer_range": 0.1,
}
_PERCEIVER = {
    "num_latents": 8,
    "d_latents": 32,
    "d_model": 16,
    "num_blocks": 1,
    "num_self_attends_per_block": 1,
    "num_self_attention_heads": 2,
    "num_cross_attention_heads": 1,
    "initializer_range": 0.2,
}

#: family -> its tiny configuration
HUGGINGFACE_FAMILIES: dict[str, HuggingFaceFamily] = {
    "ViT": HuggingFaceFamily("ViTForImageClassification", 32, "class token", _VIT),
    "DeiT": HuggingFaceFamily("DeiTForImageClassification", 32, "distillation token", _VIT),
    "DeiT with teacher": HuggingFaceFamily(
        "DeiTForImageClassificationWithTeacher",
        32,
        "class and distillation heads averaged",
        _VIT,
    ),
    "BEiT": HuggingFaceFamily(
        "BeitForImageClassification",
        32,
        "relative position bias, layer scale, mean pooling",
        {**_VIT, "use_relative_position_bias": True, "use_mean_pooling": True},
    ),
    "Data2Vec vision": HuggingFaceFamily(
        "Data2VecVisionForImageClassification", 32, "BEiT's blocks", _VIT
    ),
    "DINOv2": HuggingFaceFamily(
        "Dinov2ForImageClassification", 32, "layer scale, class and patch tokens", _VIT
    ),
    "DINOv2 with registers": HuggingFaceFamily(
        "Dinov2WithRegistersForImageClassification",
        32,
        "register tokens",
        {**_VIT, "num_register_tokens": 2},
    ),
    "I-JEPA": HuggingFaceFamily("IJepaForImageClassification", 32, "no class token", _VIT),
    "ViT MSN": HuggingFaceFamily("ViTMSNForImageClassification", 32, "ViT's blocks", _VIT),
    "CLIP": HuggingFaceFamily(
        "CLIPForImageClassification",
        32,
        "quick GELU, pre-norm",
        {"vision_config": {**_VIT, "image_size": 32}},
    ),
    "MetaCLIP 2": HuggingFaceFamily(
        "MetaClip2ForImageClassification",
        32,
        "CLIP's blocks, multilingual training",
        {"vision_config": {**_VIT, "image_size": 32}},
    ),
    "SigLIP": HuggingFaceFamily(
        "SiglipForImageClassification",
        32,
        "no class token, tanh GELU",
        {"vision_config": {**_VIT, "image_size": 32}},
    ),
    "SigLIP 2": HuggingFaceFamily(
        "Siglip2ForImageClassification",
        32,
        "images as patch sequences, resized position embeddings",
        {"vision_config": {**_VIT, "num_patches": 16}},
    ),
    "Swin": HuggingFaceFamily(
        "SwinForImageClassification", 32, "shifted windows", {**_WINDOWS, "window_size": 4}
    ),
    "Swin v2": HuggingFaceFamily(
        "Swinv2ForImageClassification",
        32,
        "cosine attention, log-spaced position bias",
        {**_WINDOWS, "window_size": 4},
    ),
    "Donut Swin": HuggingFaceFamily(
        "DonutSwinForImageClassification",
        32,
        "Swin for documents",
        {**_WINDOWS, "window_size": 4},
    ),
    "Hiera": HuggingFaceFamily(
        "HieraForImageClassification",
        64,
        "mask-unit attention",
        {
            "image_size": [64, 64],
            "embed_dim": 16,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 1, 1, 1],
        },
    ),
    "PVT": HuggingFaceFamily(
        "PvtForImageClassification",
        64,
        "spatial-reduction attention",
        {**_PYRAMID, "num_attention_heads": [1, 1, 2, 2]},
    ),
    "PVT v2": HuggingFaceFamily(
        "PvtV2ForImageClassification",
        32,
        "overlapping patches, depth-wise convolution in the MLP",
        {**_PYRAMID, "num_attention_heads": [1, 1, 2, 2]},
    ),
    "SegFormer": HuggingFaceFamily(
        "SegformerForImageClassification",
        32,
        "efficient self-attention, Mix-FFN",
        {**_PYRAMID, "num_attention_heads": [1, 1, 2, 2], "decoder_hidden_size": 16},
    ),
    "CvT": HuggingFaceFamily(
        "CvtForImageClassification",
        32,
        "convolutional projections of queries, keys and values",
        # depth[i] > i: transformers 4.57 indexes stage i's drop-path rates by i
        {"embed_dim": [16, 32, 32], "num_heads": [1, 2, 2], "depth": [1, 2, 3]},
    ),
    "MobileViT": HuggingFaceFamily(
        "MobileViTForImageClassification",
        32,
        "transformers on unfolded patches",
        {
            "hidden_sizes": [16, 16, 16],
            "neck_hidden_sizes": [8, 8, 16, 16, 16, 16, 32],
            "initializer_range": 0.2,
        },
    ),
    "MobileViT v2": HuggingFaceFamily(
        "MobileViTV2ForImageClassification",
        64,
        "separable linear attention",
        {"width_multiplier": 0.5, "initializer_range": 0.15},
    ),
    "LeViT": HuggingFaceFamily(
        "LevitForImageClassification", 64, "attention bias, hard-swish, distillation head", _LEVIT
    ),
    "LeViT with teacher": HuggingFaceFamily(
        "LevitForImageClassificationWithTeacher",
        64,
        "class and distillation heads averaged",
        _LEVIT,
    ),
    "EfficientFormer": HuggingFaceFamily(
        "EfficientFormerForImageClassification",
        224,
        "pooling blocks, then attention with a bias",
        {
            "hidden_sizes": [8, 16, 16, 16],
            "depths": [1, 1, 1, 2],
            "num_meta3d_blocks": 1,
            "dim": 16,
            "key_dim": 8,
            "num_attention_heads": 2,
        },
    ),
    "SwiftFormer": HuggingFaceFamily(
        "SwiftFormerForImageClassification",
        32,
        "efficient additive attention on normalised queries",
        {"embed_dims": [8, 16, 16, 16], "depths": [1, 1, 1, 1]},
    ),
    "ConvNeXt": HuggingFaceFamily(
        "ConvNextForImageClassification",
        32,
        "LayerNorm written out, layer scale",
        {"num_stages": 2, "hidden_sizes": [8, 16], "depths": [1, 1]},
    ),
    "ConvNeXt v2": HuggingFaceFamily(
        "ConvNextV2ForImageClassification",
        32,
        "global response normalisation",
        {"num_stages": 2, "hidden_sizes": [8, 16], "depths": [1, 1]},
    ),
    "FocalNet": HuggingFaceFamily(
        "FocalNetForImageClassification",
        32,
        "focal modulation (gated aggregation)",
        {"embed_dim": 16, "depths": [1, 1]},
    ),
    "PoolFormer": HuggingFaceFamily(
        "PoolFormerForImageClassification",
        32,
        "pooling as token mixer, GroupNorm",
        {**_PYRAMID},
    ),
    "VAN": HuggingFaceFamily(
        "VanForImageClassification",
        32,
        "large-kernel attention (a product with a convolution of the signal)",
        {"hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "mlp_ratios": [2, 2, 2, 2]},
    ),
    "ResNet": HuggingFaceFamily(
        "ResNetForImageClassification",
        32,
        "residual blocks",
        {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]},
    ),
    "RegNet": HuggingFaceFamily(
        "RegNetForImageClassification",
        32,
        "squeeze-excitation",
        {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "groups_width": 8},
    ),
    "BiT": HuggingFaceFamily(
        "BitForImageClassification",
        64,
        "weight standardisation, GroupNorm",
        {"embedding_size": 32, "hidden_sizes": [32] * 4, "depths": [1] * 4, "num_groups": 8},
    ),
    "EfficientNet": HuggingFaceFamily(
        "EfficientNetForImageClassification",
        32,
        "squeeze-excitation, swish",
        {"width_coefficient": 0.25, "depth_coefficient": 0.25, "hidden_dim": 320},
    ),
    "MobileNet v1": HuggingFaceFamily(
        "MobileNetV1ForImageClassification",
        32,
        "depth-wise convolutions",
        {"depth_multiplier": 0.25},
    ),
    "MobileNet v2": HuggingFaceFamily(
        "MobileNetV2ForImageClassification",
        32,
        "inverted residuals, ReLU6",
        {"depth_multiplier": 0.25},
    ),
    "HGNet v2": HuggingFaceFamily(
        "HGNetV2ForImageClassification", 64, "learnable affine blocks, ESE attention", {}
    ),
    "TextNet": HuggingFaceFamily("TextNetForImageClassification", 32, "asymmetric kernels", {}),
    "Perceiver, learned positions": HuggingFaceFamily(
        "PerceiverForImageClassificationLearned",
        16,
        "latent queries read the pixels by cross-attention",
        _PERCEIVER,
    ),
    "Perceiver, Fourier features": HuggingFaceFamily(
        "PerceiverForImageClassificationFourier",
        16,
        "pixels concatenated with Fourier position features",
        _PERCEIVER,
    ),
    "Perceiver, convolutional stem": HuggingFaceFamily(
        "PerceiverForImageClassificationConvProcessing",
        32,
        "a convolution and pooling before the cross-attention",
        _PERCEIVER,
    ),
    "timm wrapper": HuggingFaceFamily(
        "TimmWrapperForImageClassification",
        32,
        "a timm model in transformers' API (here timm's test ViT)",
        {"architecture": "test_vit", "model_args": {"img_size": 32}},
    ),
}


def huggingface_classifier(family: str) -> HuggingFaceClassifier:
    """The ``transformers`` model of ``family`` (`HUGGINGFACE_FAMILIES`), randomised, float64.

    Wrapped as a module that maps pixel values to logits.

    Raises:
        KeyError: An unknown family (the message lists them).
    """
    if family not in HUGGINGFACE_FAMILIES:
        raise KeyError(f"no family {family!r}; known: {', '.join(HUGGINGFACE_FAMILIES)}")
    transformers = importlib.import_module("transformers")
    spec = HUGGINGFACE_FAMILIES[family]
    model_class = getattr(transformers, spec.model)
    options = {"num_labels": CLASSES, **spec.config}
    if "image_size" in model_class.config_class().to_dict() and "vision_config" not in options:
        options.setdefault("image_size", spec.size)
    torch.manual_seed(0)
    model = model_class(model_class.config_class(**options))
    return _randomised(HuggingFaceClassifier(model))


__all__ = [
    "CLASSES",
    "HUGGINGFACE_FAMILIES",
    "HuggingFaceFamily",
    "huggingface_classifier",
    "timm_classifier",
]
