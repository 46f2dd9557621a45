"""SAM 2 as a segmenter (optional: ``pip install sam2``).

The ``sam2`` package builds from source against the installed torch; without a GPU toolchain,
``SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2`` avoids both the CUDA extension and a
second torch download.

``SAM2Segmenter`` runs SAM 2's automatic mask generator and post-processes its masks exactly like
[`SAMSegmenter`][ctc_plugin.adapters.sam.SAMSegmenter] (RGB ``uint8`` input, aspect ratio kept,
nearest-neighbour back to the classifier grid, ``to_partition``, on-disk cache). The ``sam2``
package is imported only when a ``SAM2Segmenter`` is built.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from ctc_plugin.adapters.optional import SAM_HINT, require
from ctc_plugin.adapters.sam import SAMSegmenter, load_sam, wrong_model_message

__all__ = ["SAM2Segmenter"]

_PURPOSE = "SAM2Segmenter"
_CHECKPOINT_HINT = (
    "pass checkpoint=PATH to SAM2Segmenter, with the config it belongs to as model_type; the "
    "official checkpoints are sam2.1_hiera_tiny.pt, sam2.1_hiera_small.pt, "
    "sam2.1_hiera_base_plus.pt and sam2.1_hiera_large.pt from the sam2 project"
)
_MODEL_TYPE_HINT = (
    "pass the config the checkpoint belongs to as model_type (e.g. "
    "'configs/sam2.1/sam2.1_hiera_t.yaml' for sam2.1_hiera_tiny.pt, "
    "'configs/sam2.1/sam2.1_hiera_l.yaml' for sam2.1_hiera_large.pt)"
)


def _packaged_configs() -> list[str]:
    """The model configs the installed ``sam2`` package ships, as ``model_type`` names them."""
    location = getattr(sys.modules.get("sam2"), "__file__", None)
    if location is None:
        return []
    root = Path(location).parent
    return sorted(
        path.relative_to(root).as_posix()
        for path in (root / "configs").rglob("*.yaml")
        if "training" not in path.parent.name
    )


class SAM2Segmenter(SAMSegmenter):
    """Segment Anything 2's automatic masks as features.

    Args:
        checkpoint: Path to a SAM 2 checkpoint (e.g. ``sam2.1_hiera_tiny.pt``).
        model_type: The SAM 2 config the checkpoint belongs to, e.g.
            ``"configs/sam2.1/sam2.1_hiera_t.yaml"``.
        model: An already built ``sam2.modeling.sam2_base.SAM2Base`` (instead of a checkpoint).
        device: Where SAM 2 runs (default CPU).
        image_size: Longer side of the image SAM 2 is given (aspect ratio kept).
        cache: As for ``SAMSegmenter``.
        **options: Partition, normalisation and ``SAM2AutomaticMaskGenerator`` options, as for
            ``SAMSegmenter``.

    Raises:
        ImportError: If the ``sam2`` package is not installed (the message names it).
        ValueError: A ``model_type`` that names no config sam2 can find (the message lists
            the configs it ships), and as for ``SAMSegmenter``.
    """

    result_libraries = ("sam2", "torch", "torchvision")

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | None = None,
        model_type: str = "configs/sam2.1/sam2.1_hiera_t.yaml",
        model: Any = None,
        device: str | torch.device | None = None,
        image_size: int | None = None,
        cache: Any = True,
        **options: Any,
    ) -> None:
        require("sam2", "sam2", _PURPOSE, SAM_HINT)
        self._device = torch.device(device) if device is not None else torch.device("cpu")
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
        base = require("sam2.modeling.sam2_base", "sam2", _PURPOSE, SAM_HINT).SAM2Base
        if not isinstance(model, base):
            raise TypeError(wrong_model_message(model, "a sam2 SAM2Base"))

    def _load_model(self, checkpoint: str | os.PathLike[str] | None, model_type: str) -> Any:
        build_sam2 = require("sam2.build_sam", "sam2", _PURPOSE, SAM_HINT).build_sam2

        def build(checkpoint: None = None) -> Any:  # the config names the architecture
            try:
                return build_sam2(model_type, ckpt_path=None, device=str(self._device), mode="eval")
            except Exception as error:
                missing = getattr(sys.modules.get("hydra.errors"), "MissingConfigException", ())
                if not isinstance(error, missing):
                    raise
                configs = ", ".join(_packaged_configs())
                raise ValueError(
                    f"model_type={model_type!r} is no SAM 2 config that sam2 can find"
                    + (f" (it ships {configs})" if configs else "")
                    + f"; {_MODEL_TYPE_HINT}"
                ) from error

        return load_sam(
            checkpoint,
            model_type,
            registry={model_type: build},
            what="SAM 2 checkpoint",
            hint=_CHECKPOINT_HINT,
            model_type_hint=_MODEL_TYPE_HINT,
        )

    def _generator_class(self) -> Any:
        module = require("sam2.automatic_mask_generator", "sam2", _PURPOSE, SAM_HINT)
        return module.SAM2AutomaticMaskGenerator
