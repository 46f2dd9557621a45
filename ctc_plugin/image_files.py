"""Which files of a folder are images: the file name endings the package reads as images.

A module of its own, without imports, so that the command line can list a folder's images (and
refuse a folder without any) before torch is imported.
"""

from __future__ import annotations

__all__ = ["IMAGE_SUFFIXES", "is_image_file"]

#: File name endings read as images (case-insensitive): the commands take these files of a folder
#: and ignore the others.
IMAGE_SUFFIXES = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
)  # fmt: skip


def is_image_file(name: str) -> bool:
    """Whether a file name ends in one of `IMAGE_SUFFIXES` (in any case)."""
    return name.lower().endswith(IMAGE_SUFFIXES)
