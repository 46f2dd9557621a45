"""Keyword arguments of ``HuggingFaceClassifier`` that the model's forward does not take.

Was: ``transformers`` models take unknown keywords into ``**kwargs`` and ignore them, so
``HuggingFaceClassifier(vit, interpolate_pos_encodings=True)`` (one letter too many) ran every
call without the option, and images of another size failed later with the position embedding's
shape error, or ran at the trained size without a word.
"""

from __future__ import annotations

import typing

import pytest
import torch
from typing_extensions import TypedDict, Unpack  # typing's are Python 3.11's

from ctc_plugin.adapters.huggingface import HuggingFaceClassifier

transformers = pytest.importorskip("transformers")


def tiny_vit():
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        num_labels=3,
    )
    return transformers.ViTForImageClassification(config).eval()


def test_a_misspelt_keyword_of_a_transformers_model_is_refused_with_the_right_name():
    with pytest.raises(
        TypeError,
        match=r"no keyword 'interpolate_pos_encodings' \(did you mean "
        r"'interpolate_pos_encoding'\?.*every call",
    ):
        HuggingFaceClassifier(tiny_vit(), interpolate_pos_encodings=True)


def test_the_keywords_the_forward_takes_are_accepted_and_passed():
    model = HuggingFaceClassifier(
        tiny_vit(), interpolate_pos_encoding=True, output_attentions=False
    )
    assert model(torch.rand(1, 3, 48, 48)).shape == (1, 3)


class Options(TypedDict, total=False):
    scale: float


class TypedKeywords(torch.nn.Module):
    def forward(self, pixel_values, **kwargs: Unpack[Options]):
        logits = pixel_values.flatten(1)[:, :3] * kwargs.get("scale", 1.0)
        return type("Output", (), {"logits": logits})()


class AnyKeywords(torch.nn.Module):
    def forward(self, pixel_values, labels=None, **kwargs):
        logits = pixel_values.flatten(1)[:, :3] * kwargs.get("scale", 1.0)
        return type("Output", (), {"logits": logits})()


def test_a_typed_dicts_keys_are_taken():
    x = torch.rand(1, 3, 2, 2)
    assert torch.equal(
        HuggingFaceClassifier(TypedKeywords(), scale=2.0)(x), 2 * x.flatten(1)[:, :3]
    )
    with pytest.raises(TypeError, match=r"'scal' \(did you mean 'scale'\?"):
        HuggingFaceClassifier(TypedKeywords(), scal=2.0)
    with pytest.raises(TypeError, match=r"no keyword 'foo' \(it names pixel_values\)"):
        HuggingFaceClassifier(TypedKeywords(), foo=1)


def test_a_plain_kwargs_forward_refuses_only_near_misses():
    x = torch.rand(1, 3, 2, 2)
    assert torch.equal(HuggingFaceClassifier(AnyKeywords(), scale=2.0)(x), 2 * x.flatten(1)[:, :3])
    with pytest.raises(TypeError, match=r"'labls' \(did you mean 'labels'\?"):
        HuggingFaceClassifier(AnyKeywords(), labls=None)


def test_a_typed_dicts_keys_are_read_without_typing_unpack(monkeypatch):
    """Python 3.10, which the package takes, has no ``typing.Unpack`` (``transformers`` there
    annotates ``**kwargs`` with ``typing_extensions.Unpack``): every model whose forward took
    ``**kwargs`` failed with ``AttributeError: module 'typing' has no attribute 'Unpack'``."""
    monkeypatch.delattr(typing, "Unpack", raising=False)
    x = torch.rand(1, 3, 2, 2)
    assert torch.equal(
        HuggingFaceClassifier(TypedKeywords(), scale=2.0)(x), 2 * x.flatten(1)[:, :3]
    )
    with pytest.raises(TypeError, match=r"'scal' \(did you mean 'scale'\?"):
        HuggingFaceClassifier(TypedKeywords(), scal=2.0)
    assert torch.equal(HuggingFaceClassifier(AnyKeywords(), scale=2.0)(x), 2 * x.flatten(1)[:, :3])
