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

from ctc_plugin.zoo.loading import (
    FAMILIES,
    build,
    load,
    load_explainer,
    load_torchvision,
    weights_path,
)
from ctc_plugin.zoo.models import HEADS
from ctc_plugin.zoo.training import (
    TrainConfig,
    evaluate,
    train,
    train_family,
    training_config,
)

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
