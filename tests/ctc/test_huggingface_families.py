"""CTC is exact on Hugging Face ``transformers`` image classifiers, built as transformers does.

One tiny configuration per family (``ctc_plugin.model_families.HUGGINGFACE_FAMILIES``: ViTs with
class, distillation and register tokens, BEiT's relative position bias, CLIP's quick GELU,
SigLIP, SigLIP 2 (images cut into patch sequences), Swin v1/v2, Hiera, PVT, SegFormer, CvT's
convolutional projections, MobileViT v1/v2, LeViT, SwiftFormer's additive attention on
normalised queries, ConvNeXt v1/v2, FocalNet, PoolFormer, VAN, ResNet, RegNet, BiT,
EfficientNet, MobileNets, HGNet v2, TextNet, Perceiver's latent array reading the pixels, the
timm wrapper, the heads averaged with a distillation head), random
weights (statistics, biases and norm weights drawn, every parameter moved by noise), wrapped by
``HuggingFaceClassifier``, in float64 on a 2 x 2 grid: ``"proportional"`` scores add up to the
target logit, the fast pass equals the spec, and one image alone gives its scores in the batch.
The table of every family is ``docs/scripts/huggingface_support.py`` (page "Choose a method").
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin import CTC, IntegrativeCAM
from ctc_plugin.adapters.huggingface import HuggingFaceClassifier
from ctc_plugin.model_families import HUGGINGFACE_FAMILIES, huggingface_classifier

from .exactness import assert_equals_the_spec, assert_proportional_adds_up

pytest.importorskip("transformers")

#: families whose tiny model takes 224² images or whose checks take seconds: make test-slow
SLOW = {"EfficientFormer", "HGNet v2"}

#: The fast pass shares biases in another order of the same float64 operations. Tiny random
#: models amplify that rounding: reordering the spec's own arithmetic moves the scores by ~5e-9
#: of the largest score (MobileViT, MobileNet v2), ~1.5e-7 in HGNet v2's 20 learnable affine
#: layers. Relative tolerance of fast pass vs spec, by family (default 3e-8).
SPEC_TOLERANCE = {"HGNet v2": 3e-7}


def _inputs(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(3)).double()
    rows = torch.arange(size) * 2 // size
    return x, (rows.view(1, 1, -1, 1) * 2 + rows.view(1, 1, 1, -1))


@pytest.mark.parametrize(
    "family",
    [
        pytest.param(family, marks=pytest.mark.slow) if family in SLOW else family
        for family in HUGGINGFACE_FAMILIES
    ],
)
def test_proportional_adds_up_and_equals_the_spec(family: str) -> None:
    model = huggingface_classifier(family)
    x, mask = _inputs(HUGGINGFACE_FAMILIES[family].size)
    scores = assert_proportional_adds_up(model, x, mask, 1, relative=1e-10)
    assert scores.scores.std() > 1e-4  # the features differ: no logit is the bias alone
    tolerance = SPEC_TOLERANCE.get(family, 3e-8)
    assert_equals_the_spec(model, x, mask, 1, scores, relative=tolerance)
    alone = assert_proportional_adds_up(model, x[1:], mask, 1, relative=1e-10)
    torch.testing.assert_close(alone.scores, scores.scores[1:], rtol=tolerance, atol=1e-12)


def test_the_wrapper_returns_the_logits_and_refuses_outputs_without_them() -> None:
    model = huggingface_classifier("ViT")
    x, _ = _inputs(32)
    with torch.no_grad():
        expected = model.model(pixel_values=x).logits
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    backbone = HuggingFaceClassifier(model.model.vit)  # a model without a classification head
    with pytest.raises(TypeError, match="has no logits tensor"):
        backbone(x)
    with pytest.raises(TypeError, match="wraps a torch module"):
        HuggingFaceClassifier(lambda x: x)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", [CTC, IntegrativeCAM])
def test_an_unwrapped_model_is_refused_with_the_wrapper_named(method) -> None:
    """A Hugging Face model returns ImageClassifierOutput: the message says how to get logits."""
    model = huggingface_classifier("ViT").model
    x, mask = _inputs(32)
    extra = {"feature_mask": mask} if method is CTC else {}
    with pytest.raises(ValueError, match=r"returned ImageClassifierOutput, not a tensor of score"):
        method(model).attribute(x, target=0, **extra)
    with pytest.raises(ValueError, match=r"HuggingFaceClassifier\(model\)"):
        method(model).attribute(x, target=0, **extra)
    as_tuple = lambda images: (model(pixel_values=images).logits,)  # noqa: E731
    with pytest.raises(ValueError, match=r"returned tuple.*return the scores alone"):
        method(as_tuple).attribute(x, target=0, **extra)
    assert not model._forward_hooks and not model._forward_pre_hooks
