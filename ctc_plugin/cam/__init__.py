"""Integrative CAM: class activation maps fused across all layers.

```pycon
>>> from ctc_plugin.cam import IntegrativeCAM, PatchTokens, Phi, TupleOutput, tokens_to_grid
```
"""

from ctc_plugin.cam.alpha import Phi
from ctc_plugin.cam.integrative import (
    EmptyMapWarning,
    IntegrativeCAM,
    LayerCalledAgainWarning,
    LayerMaps,
    NoFeatureMapsError,
    ZeroMapWarning,
)
from ctc_plugin.cam.known_blocks import BLOCK_RESHAPES
from ctc_plugin.cam.reshapes import (
    PatchTokens,
    TupleOutput,
    UnrolledTokens,
    channels_last_to_grid,
    tokens_to_grid,
)
from ctc_plugin.cam.transformers import (
    NoSpatialMapError,
    UnknownBlocksError,
    grad_cam_layer,
    last_spatial_layer,
    transformer_stages,
)

__all__ = [
    "BLOCK_RESHAPES",
    "EmptyMapWarning",
    "IntegrativeCAM",
    "LayerCalledAgainWarning",
    "LayerMaps",
    "NoFeatureMapsError",
    "NoSpatialMapError",
    "PatchTokens",
    "Phi",
    "TupleOutput",
    "UnknownBlocksError",
    "UnrolledTokens",
    "ZeroMapWarning",
    "channels_last_to_grid",
    "grad_cam_layer",
    "last_spatial_layer",
    "tokens_to_grid",
    "transformer_stages",
]
