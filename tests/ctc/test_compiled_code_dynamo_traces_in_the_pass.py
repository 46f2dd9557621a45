"""Compiled code that dynamo traces inside the pass is refused by name, not with dynamo's error.

Compiled code runs as Python code under the pass, but a function that compiles itself with
``fullgraph=True`` and was compiled before the pass (Hugging Face's flex attention after one
plain forward) is traced by dynamo, which fails inside the pass's rules. The call is then
refused with an `UnsupportedOperationError` naming the module and what to run instead, and the
model is left as it was.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC, UnsupportedOperationError
from ctc_plugin.testing import random_partition


class _TracedInside(nn.Module):
    """Fails as dynamo does when it traces the pass's rules."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._dynamo.exc

        raise torch._dynamo.exc.Unsupported("Attempted to call a super() attribute")


def test_a_dynamo_error_in_the_pass_names_the_module_and_the_way_out():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _TracedInside()).eval()
    with pytest.raises(UnsupportedOperationError) as caught:
        CTC(model).attribute(torch.rand(1, 3, 8, 8), 0, feature_mask=random_partition(8, 8, 4))
    message = str(caught.value)
    assert "torch.compile'd code in 1 (_TracedInside)" in message
    assert 'attn_implementation="sdpa" or "eager"' in message
    assert "Unsupported: Attempted to call a super() attribute" in message
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.slow
def test_hugging_face_flex_attention_compiled_before_the_call_is_refused_by_name():
    transformers = pytest.importorskip("transformers")
    from ctc_plugin.adapters.huggingface import HuggingFaceClassifier

    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=4,
    )  # fmt: skip
    torch.manual_seed(0)
    vit = transformers.ViTForImageClassification._from_config(
        config, attn_implementation="flex_attention"
    ).eval()
    model = HuggingFaceClassifier(vit)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)  # compiles flex attention
    with pytest.raises(UnsupportedOperationError, match="torch.compile'd code in .*ViTSelfAtt"):
        CTC(model).attribute(x, 1, feature_mask=random_partition(32, 32, 4))
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert vit.config._attn_implementation == "flex_attention"
