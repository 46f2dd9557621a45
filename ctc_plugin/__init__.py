"""ctc-plugin: segment-level explanations for PyTorch image classifiers.

The public API is re-exported here and imported lazily, so ``import ctc_plugin`` stays cheap
and a subpackage's optional dependencies are only needed when that subpackage is used:

    from ctc_plugin import CTC, CTCComposite, CTCAttributor, IntegrativeCAM
    from ctc_plugin import distribute_within_features, register_rule
    from ctc_plugin import Explainer, ExplainerAttribution
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "CTC": "ctc_plugin.ctc.attribution",
    "FeatureScores": "ctc_plugin.ctc.feature_scores",
    "distribute_within_features": "ctc_plugin.ctc.within",
    "UnsupportedOperationError": "ctc_plugin.ctc.errors",
    "TrainingModeError": "ctc_plugin.inputs",
    "DtypeMismatchError": "ctc_plugin.inputs",
    "UntracedOutputError": "ctc_plugin.ctc.errors",
    "CompositeOutsideAttributorError": "ctc_plugin.ctc.errors",
    "register_rule": "ctc_plugin.ctc.operations",
    "ClassifierMismatchWarning": "ctc_plugin.explainer.attribution",
    "CTCComposite": "ctc_plugin.ctc.composite",
    "CTCAttributor": "ctc_plugin.ctc.attributor",
    "IntegrativeCAM": "ctc_plugin.cam.integrative",
    "Explainer": "ctc_plugin.explainer.network",
    "ExplainerAttribution": "ctc_plugin.explainer.attribution",
}

__all__ = [
    "CTC",
    "CTCAttributor",
    "CTCComposite",
    "ClassifierMismatchWarning",
    "CompositeOutsideAttributorError",
    "DtypeMismatchError",
    "Explainer",
    "ExplainerAttribution",
    "FeatureScores",
    "IntegrativeCAM",
    "TrainingModeError",
    "UnsupportedOperationError",
    "UntracedOutputError",
    "__version__",
    "distribute_within_features",
    "register_rule",
    "zoo",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ctc_plugin import zoo
    from ctc_plugin.cam.integrative import IntegrativeCAM
    from ctc_plugin.ctc.attribution import CTC
    from ctc_plugin.ctc.attributor import CTCAttributor
    from ctc_plugin.ctc.composite import CTCComposite
    from ctc_plugin.ctc.errors import (
        CompositeOutsideAttributorError,
        UnsupportedOperationError,
        UntracedOutputError,
    )
    from ctc_plugin.ctc.feature_scores import FeatureScores
    from ctc_plugin.ctc.operations import register_rule
    from ctc_plugin.ctc.within import distribute_within_features
    from ctc_plugin.explainer.attribution import ClassifierMismatchWarning, ExplainerAttribution
    from ctc_plugin.explainer.network import Explainer
    from ctc_plugin.inputs import DtypeMismatchError, TrainingModeError


def __getattr__(name: str) -> Any:
    """Import a public name on first use."""
    if name == "zoo":
        return importlib.import_module("ctc_plugin.zoo")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ctc_plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
