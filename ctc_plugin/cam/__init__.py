"""Integrative CAM: class activation maps fused across all layers.

>>> from ctc_plugin.cam import IntegrativeCAM, Phi
"""

from ctc_plugin.cam.alpha import Phi
from ctc_plugin.cam.integrative import IntegrativeCAM, LayerMaps

__all__ = ["IntegrativeCAM", "LayerMaps", "Phi"]
