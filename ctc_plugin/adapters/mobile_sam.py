"""MobileSAM as a segmenter (optional: the ``mobile_sam`` package).

MobileSAM keeps segment-anything's interface with a small ViT-T image encoder (about 10 M
parameters, several times faster on a CPU). ``MobileSAMSegmenter`` is
[`SAMSegmenter`][ctc_plugin.adapters.sam.SAMSegmenter] with MobileSAM's model registry and mask
generator; the ``mobile_sam`` package is imported only when one is built. MobileSAM is not
published on PyPI under its own name: install it from its repository
(``pip install git+https://github.com/ChaoningZhang/MobileSAM``).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ctc_plugin.adapters.optional import SAM_HINT, require
from ctc_plugin.adapters.sam import SAMSegmenter, load_sam, wrong_model_message

__all__ = ["MobileSAMSegmenter"]

_PURPOSE = "MobileSAMSegmenter"
_PIP = "git+https://github.com/ChaoningZhang/MobileSAM"
_CHECKPOINT_HINT = (
    "pass checkpoint=PATH to MobileSAMSegmenter; the official checkpoint is mobile_sam.pt "
    "(weights/mobile_sam.pt in the MobileSAM repository)"
)
_MODEL_TYPE_HINT = "MobileSAM's own checkpoint mobile_sam.pt is model_type='vit_t'"


class MobileSAMSegmenter(SAMSegmenter):
    """MobileSAM's automatic masks as features.

    Args:
        checkpoint: Path to ``mobile_sam.pt``.
        model_type: ``"vit_t"``.
        model: An already built MobileSAM ``Sam`` (instead of a checkpoint).
        device: Where MobileSAM runs.
        image_size: Longer side of the image MobileSAM is given (aspect ratio kept).
        cache: As for ``SAMSegmenter``.
        **options: Partition, normalisation and mask generator options, as for ``SAMSegmenter``.

    Raises:
        ImportError: If the ``mobile_sam`` package is not installed (the message says how).
    """

    result_libraries = ("mobile_sam", "torch", "torchvision")

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | None = None,
        model_type: str = "vit_t",
        model: Any = None,
        device: str | torch.device | None = None,
        image_size: int | None = None,
        cache: Any = True,
        **options: Any,
    ) -> None:
        require("mobile_sam", _PIP, _PURPOSE, SAM_HINT)
        super().__init__(
            checkpoint=checkpoint,
            model_type=model_type,
            model=model,
            device=device,
            image_size=image_size,
            cache=cache,
            **options,
        )

    def _check_model(self, model: Any) -> None:
        sam_class = require("mobile_sam.modeling", _PIP, _PURPOSE, SAM_HINT).Sam
        if not isinstance(model, sam_class):
            raise TypeError(wrong_model_message(model, "a mobile_sam Sam"))

    def _load_model(self, checkpoint: str | os.PathLike[str] | None, model_type: str) -> Any:
        registry = require("mobile_sam", _PIP, _PURPOSE, SAM_HINT).sam_model_registry
        return load_sam(
            checkpoint,
            model_type,
            registry=registry,
            what="MobileSAM checkpoint",
            hint=_CHECKPOINT_HINT,
            model_type_hint=_MODEL_TYPE_HINT,
        )

    def _generator_class(self) -> Any:
        return require("mobile_sam", _PIP, _PURPOSE, SAM_HINT).SamAutomaticMaskGenerator
