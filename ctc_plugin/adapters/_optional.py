"""Import optional packages with an error that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, pip_name: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an ImportError naming the pip package to install.

    Args:
        module: The import name, e.g. ``"sam2.build_sam"``.
        pip_name: What to install, e.g. ``"sam2"``.
        purpose: What needs it, for the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the optional package {pip_name!r}, which is not installed "
            f"(`pip install {pip_name}`); the segment-anything based SAMSegmenter needs no extra"
        ) from error
