"""Small classifiers with shipped weights, trained on `ShapesDataset`.

```pycon
>>> from ctc_plugin import zoo
>>> model = zoo.load("resnet")            # eval mode, takes images in [0, 1], returns logits
```

Families: ``"vgg"``, ``"resnet"``, ``"densenet"``, ``"inception"`` (the CTC paper's four),
``"efficientnet"`` (squeeze-excitation, LayerNorm, SiLU/GELU) and ``"vit"`` (a vision transformer);
splits ``"shapes"`` and ``"composite"``. [`load_torchvision`][ctc_plugin.zoo.load_torchvision] loads
a real torchvision architecture from local weights.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ctc_plugin.zoo.settings import FAMILIES, TrainConfig, training_config

#: Where each public name lives; imported on first use, so that ``from ctc_plugin.zoo import
#: FAMILIES`` (the command line's help) needs no torch.
_EXPORTS = {
    "HEADS": "ctc_plugin.zoo.models",
    "build": "ctc_plugin.zoo.loading",
    "evaluate": "ctc_plugin.zoo.training",
    "load": "ctc_plugin.zoo.loading",
    "load_explainer": "ctc_plugin.zoo.explainers",
    "load_torchvision": "ctc_plugin.zoo.loading",
    "train": "ctc_plugin.zoo.training",
    "train_family": "ctc_plugin.zoo.training",
    "weights_path": "ctc_plugin.zoo.loading",
}

__all__ = [
    "FAMILIES",
    "HEADS",
    "TrainConfig",
    "build",
    "evaluate",
    "load",
    "load_explainer",
    "load_torchvision",
    "train",
    "train_family",
    "training_config",
    "weights_path",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ctc_plugin.zoo.explainers import load_explainer
    from ctc_plugin.zoo.loading import build, load, load_torchvision, weights_path
    from ctc_plugin.zoo.models import HEADS
    from ctc_plugin.zoo.training import evaluate, train, train_family


#: Submodules, reachable as attributes as an eagerly imported package's would be.
_SUBMODULES = ("explainers", "loading", "models", "settings", "training")


def __getattr__(name: str) -> Any:
    """Import a public name (or a submodule) on first use."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ctc_plugin.zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
