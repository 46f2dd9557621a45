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

    Raises:
        ImportError: ``module`` is not installed (the message names ``pip_name``), or it is but
            importing it failed, e.g. on a dependency of its own that is missing (the message
            names what failed).
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = getattr(error, "name", None)
        parts = module.split(".")
        own = {".".join(parts[: i + 1]) for i in range(len(parts))}
        if missing is not None and missing not in own:
            raise ImportError(
                f"{purpose} needs the optional package {pip_name!r}: it is installed, but "
                f"importing {module!r} failed ({type(error).__name__}: {error}); install what "
                f"that names, or reinstall {pip_name!r}"
            ) from error
        raise ImportError(
            f"{purpose} needs the optional package {pip_name!r}, which is not installed "
            f"(`pip install {pip_name}`); the segment-anything based SAMSegmenter needs no extra"
        ) from error
