"""Which files of a folder are images: the file name endings the package reads as images.

A module of its own, importing nothing but the standard library, so that the command line can
look into a folder (and refuse one without images) before torch is imported.
"""

from __future__ import annotations

import os

__all__ = ["IMAGE_SUFFIXES", "holds_images", "is_image_file"]

#: File name endings read as images (case-insensitive): the commands take these files of a folder
#: and ignore the others.
IMAGE_SUFFIXES = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
    ".pgm", ".pbm", ".pnm", ".tga",
)  # fmt: skip


def is_image_file(name: str) -> bool:
    """Whether a file name ends in one of `IMAGE_SUFFIXES` (in any case)."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def holds_images(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` or a folder in it holds an image file (hidden names left out).

    Links to folders are not followed (a link cycle cannot make it walk forever).
    """
    for _, subfolders, names in os.walk(folder):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        if any(is_image_file(name) for name in names if not name.startswith(".")):
            return True
    return False
