"""Hugging Face ``transformers`` image classifiers as the tensor-to-logits models Captum expects.

A ``transformers`` model takes ``pixel_values`` and returns an ``ImageClassifierOutput``; Captum,
CTC and Integrative CAM call ``forward_func(x)`` and read a tensor of logits.
[`HuggingFaceClassifier`][ctc_plugin.adapters.huggingface.HuggingFaceClassifier] wraps the model
as an ``nn.Module`` (so that Integrative CAM and the Zennit composite see its modules) whose
forward returns the logits:

```python
from transformers import AutoModelForImageClassification
from ctc_plugin import CTC
from ctc_plugin.adapters.huggingface import HuggingFaceClassifier

model = HuggingFaceClassifier(AutoModelForImageClassification.from_pretrained(name).eval())
scores = CTC(model).attribute(pixel_values, target=label, feature_mask=segments)
```

``transformers`` is not imported here: any module whose output carries ``logits`` works.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class HuggingFaceClassifier(nn.Module):
    """A ``transformers`` image classifier whose forward maps pixel values to logits.

    Args:
        model: The classifier (``ViTForImageClassification``, ``ConvNextForImageClassification``,
            ``AutoModelForImageClassification.from_pretrained(...)``, ...); it stays a submodule,
            so ``.eval()``, ``.double()`` and hooks reach it.
        **inputs: Further keyword arguments for every call (``interpolate_pos_encoding=True``
            for images of another size than the model was trained on).

    Raises:
        TypeError: At a call, if the model's output has no ``logits`` tensor.
    """

    def __init__(self, model: nn.Module, **inputs: Any) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"HuggingFaceClassifier wraps a torch module; got {type(model).__name__}"
            )
        self.model = model
        self.inputs = inputs

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The model's logits (N, classes) for ``pixel_values`` (N, C, H, W)."""
        output = self.model(pixel_values=pixel_values, **self.inputs)
        logits = getattr(output, "logits", None)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(
                f"{type(self.model).__name__} returned {type(output).__name__}, which has no "
                "logits tensor; wrap an image classification model (a *ForImageClassification "
                "class), or write a forward function that returns the logits"
            )
        return logits


__all__ = ["HuggingFaceClassifier"]
