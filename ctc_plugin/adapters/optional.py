"""Import optional packages with an error that says what to install."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


def require(module: str, pip_name: str, purpose: str, hint: str = "") -> ModuleType:
    """Import ``module`` or raise an ImportError naming the pip package to install.

    Args:
        module: The import name, e.g. ``"sam2.build_sam"``.
        pip_name: What to install, e.g. ``"sam2"``.
        purpose: What needs it, for the message.
        hint: Said after the advice to install it, when it is not installed (an alternative).

    Raises:
        ImportError: ``module``'s top-level package is not installed (the message names
            ``pip_name``), or it is but importing ``module`` failed, e.g. on a dependency of its
            own that is missing or a version guard (the message names what failed).
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if _installed(module.partition(".")[0]):
            raise ImportError(
                f"{purpose} needs the optional package {pip_name!r}: it is installed, but "
                f"importing {module!r} failed ({type(error).__name__}: {error}); install what "
                f"that names, or reinstall {pip_name!r}"
            ) from error
        raise ImportError(
            f"{purpose} needs the optional package {pip_name!r}, which is not installed "
            f"(`pip install {pip_name}`){hint and '; ' + hint}"
        ) from error


#: The alternative the SAM adapters name: the segmenter of ``segment-anything``, a dependency.
SAM_HINT = "the segment-anything based SAMSegmenter needs no extra"


def _installed(top_level: str) -> bool:
    """Whether the top-level package ``top_level`` can be found (imported or not)."""
    try:
        return importlib.util.find_spec(top_level) is not None
    except ValueError:  # in sys.modules without a __spec__: it is there
        return True
