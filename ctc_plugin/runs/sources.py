"""Where a run's images come from: an image folder or the bundled shapes data set.

A SOURCE is either

- a folder of images, read like torchvision's ``ImageFolder`` when it holds class subfolders
  (``DIR/cat/1.jpg``, ``DIR/dog/2.png``: the label of an image is the index of its class folder
  among the sorted folder names) and as a flat list of images otherwise (no labels); or
- ``shapes`` / ``shapes:composite``: the bundled
  [`ShapesDataset`][ctc_plugin.datasets.dataset.ShapesDataset], ``images`` of them drawn with
  ``seed``.

Symbolic links to folders are followed, as ``ImageFolder`` follows them (a link back to a folder
above it is not followed again). Images are always listed in the same order (by their path
below SOURCE, compared as text: ``circle sub/b.png`` comes before ``circle/a.png``), so the same
SOURCE gives the same plan on every machine.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ctc_plugin.image_files import IMAGE_SUFFIXES, is_image_file
from ctc_plugin.wording import agreeing, counted, first_names, not_utf8

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

__all__ = ["ImageRef", "Source", "SourceError", "resolve_source"]

#: The bundled synthetic data sets a SOURCE may name.
SHAPES_SOURCES = ("shapes", "shapes:composite")


class SourceError(ValueError):
    """SOURCE names no usable images; the message says what was wrong and what to give."""


@dataclass(frozen=True)
class ImageRef:
    """One image of a run.

    Attributes:
        index: Position in the run's image list (``0..N-1``).
        name: The image's id: its path relative to the folder (``/``-separated), or
            ``shapes-<i>``.
        label: Class index from the folder or the data set, or ``None`` when unknown.
    """

    index: int
    name: str
    label: int | None


@dataclass(frozen=True)
class Source:
    """A resolved SOURCE: its images, in order, and how to read them.

    Attributes:
        spec: The SOURCE as given (a folder path or ``shapes``); the manifest stores a
            folder's resolved path instead, so ``photos``, ``photos/`` and ``$PWD/photos``
            are the same run.
        kind: ``"folder"`` or ``"shapes"``.
        images: Every image, in plan order.
        classes: Class names by label, when the source has classes.
        root: The folder (``kind == "folder"``).
        split: The shapes split (``kind == "shapes"``).
        seed: The shapes seed (``kind == "shapes"``).
        skipped: The folder's files (not hidden) whose names end in none of
            ``IMAGE_SUFFIXES``, relative to it: not read (`skipped_note` says so).
        limit: The ``images`` (``--images``) a folder's list was cut to, or ``None`` (all its
            images; and for the shapes sources, whose ``images`` is their count). Not part of
            `describe`: the image list says which images a run explains.
    """

    spec: str
    kind: str
    images: tuple[ImageRef, ...]
    classes: tuple[str, ...] | None
    root: Path | None = None
    split: str | None = None
    seed: int = 1
    skipped: tuple[str, ...] = ()
    limit: int | None = None

    def skipped_note(self) -> str | None:
        """What a run says of the files it does not read (``None``: there are none)."""
        if not self.skipped:
            return None
        return (
            f"SOURCE {self.spec!r}: {counted(len(self.skipped), 'file')} not read "
            f"({first_names(list(self.skipped))}): only names ending in "
            f"{', '.join(IMAGE_SUFFIXES)} are images; convert or rename them to include them"
        )

    def read(self, image: ImageRef) -> Path | Tensor:
        """What [`ImagePreprocessing`][ctc_plugin.images.ImagePreprocessing] is called on."""
        if self.kind == "folder":
            assert self.root is not None
            return self.root / image.name
        from ctc_plugin.datasets.dataset import ShapesDataset

        data = ShapesDataset(self.split or "shapes", size=len(self.images), seed=self.seed)
        return data[image.index]["image"]

    def describe(self) -> dict[str, object]:
        """The source as plain data (part of a run's manifest); a folder by its resolved path."""
        return {
            "kind": self.kind,
            "spec": str(self.root) if self.kind == "folder" else self.spec,
            "split": self.split,
            "seed": self.seed if self.kind == "shapes" else None,
            "classes": list(self.classes) if self.classes is not None else None,
            "images": [[ref.name, ref.label] for ref in self.images],
        }


def resolve_source(
    spec: str | os.PathLike[str], images: int | None = None, seed: int = 1
) -> Source:
    """Resolve SOURCE into its images.

    Args:
        spec: An image folder, ``"shapes"`` or ``"shapes:composite"``.
        images: How many shapes images (required for ``shapes``); for a folder, at most this
            many of its images (the first ones in order), ``None`` for all.
        seed: Seed of the shapes images.

    Raises:
        SourceError: For a path that does not exist or is a file, a folder without images, a
            folder mixing images and class subfolders at its top level, image names that are
            no files (links to nothing), image files that are not images (their headers are
            read), floating-point images (mode F) or names that are not valid UTF-8, or
            ``shapes`` without a positive ``images``, or ``images`` that is no count (a tensor).
    """
    counts = isinstance(images, numbers.Integral) and not isinstance(images, bool)
    if images is not None and not counts:
        raise SourceError(  # a tensor of images here failed with "Boolean value of Tensor"
            f"images is how many images to explain (an int, or None for all), got "
            f"{type(images).__name__}; the images themselves come from SOURCE (a folder)"
        )
    text = os.fspath(spec)
    if text in SHAPES_SOURCES:
        return _shapes(text, images, seed)
    if images is not None and images < 1:
        raise SourceError(f"images must be at least 1, got {images}")
    root = Path(text).expanduser()
    if not root.exists():
        raise SourceError(
            f"SOURCE {text!r} is neither an image folder nor one of {', '.join(SHAPES_SOURCES)}"
        )
    if not root.is_dir():
        raise SourceError(f"SOURCE {text!r} is a file; give the folder that holds the images")
    others: list[Path] = []
    files = sorted(_image_files(root, others), key=lambda path: path.relative_to(root).as_posix())
    dangling = [path.relative_to(root).as_posix() for path in files if not path.is_file()]
    if dangling:
        raise SourceError(
            f"SOURCE {text!r}: {len(dangling)} image names are no files (links to nothing, "
            f"pipes: {first_names(dangling)}); remove them or restore what they point to, then "
            "run the command again"
        )
    if not files:
        raise SourceError(
            f"SOURCE {text!r} holds no images (files ending in {', '.join(IMAGE_SUFFIXES)})"
        )
    top = [path for path in files if path.parent == root]
    nested = [path for path in files if path.parent != root]
    if top and nested:
        folders = sorted({path.relative_to(root).parts[0] + "/" for path in nested})
        raise SourceError(
            f"SOURCE {text!r} mixes images at its top level ({first_names([p.name for p in top])}) "
            f"with class subfolders ({first_names(folders)}); put every image in a class "
            "subfolder, or all of them at the top level"
        )
    classes: tuple[str, ...] | None = None
    labels: list[int | None] = [None] * len(files)
    if nested:
        classes = _class_folders(root, {path.relative_to(root).parts[0] for path in nested})
        labels = [classes.index(path.relative_to(root).parts[0]) for path in files]
    refs = tuple(
        ImageRef(i, path.relative_to(root).as_posix(), label)
        for i, (path, label) in enumerate(zip(files, labels))
    )
    if images is not None:
        refs = refs[:images]
    _check_names(text, refs)
    _check_readable(text, root, refs)
    skipped = tuple(sorted(path.relative_to(root).as_posix() for path in others))
    return Source(text, "folder", refs, classes, root=root.resolve(), skipped=skipped, limit=images)


def _class_folders(root: Path, with_images: set[str]) -> tuple[str, ...]:
    """The class folders of ``root`` in order: every folder at its top level, with images or not.

    Labels are numbered by the sorted class folders, as torchvision's ``ImageFolder`` numbers
    them with ``allow_empty=True``: a folder that holds no image (empty, or only other files)
    keeps its place, so the labels of the folders after it do not shift (``--targets label``
    would explain another class than the model's). Hidden folders and links back to ``root``
    or above it are no classes.
    """
    folders = set(with_images)
    resolved = root.resolve()
    for entry in root.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        target = entry.resolve()
        if target == resolved or target in resolved.parents:
            continue
        folders.add(entry.name)
    return tuple(sorted(folders))


def _check_names(text: str, refs: tuple[ImageRef, ...]) -> None:
    """Refuse, before any work, file names that are not valid UTF-8.

    The results table stores each image's name as text; a name with bytes that are not UTF-8
    (written on another system, say) would stop the run at that image's shard.
    """
    bad = [shown for shown in map(not_utf8, (ref.name for ref in refs)) if shown is not None]
    if bad:
        raise SourceError(
            f"SOURCE {text!r}: {len(bad)} of its {len(refs)} image files "
            f"{agreeing(len(bad), 'has a name that is', 'have names that are')} not valid UTF-8 "
            f"({first_names(bad)}); rename {agreeing(len(bad), 'it', 'them')}, then run the "
            "command again"
        )


def _check_readable(text: str, root: Path, refs: tuple[ImageRef, ...]) -> None:
    """Refuse, before any work, files whose header Pillow cannot read as an image.

    Only the headers are read (fast); a file damaged further on is reported when its shard
    reads it.
    """
    from PIL import Image, UnidentifiedImageError

    bad, floating = [], []
    for ref in refs:
        try:
            with Image.open(root / ref.name) as image:
                if image.mode == "F":
                    floating.append(ref.name)
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError):
            bad.append(ref.name)
    if bad:
        raise SourceError(
            f"SOURCE {text!r}: {len(bad)} of its {len(refs)} image files cannot be read as "
            f"images ({first_names(bad)}); replace or remove {'it' if len(bad) == 1 else 'them'}, "
            "then run the command again"
        )
    if floating:
        raise SourceError(
            f"SOURCE {text!r}: {len(floating)} of its {len(refs)} image files "
            + agreeing(
                len(floating),
                f"is a floating-point image (mode F: {floating[0]}), which has no fixed range "
                "of colours; save it as an 8- or 16-bit image",
                f"are floating-point images (mode F: {first_names(floating)}), which have no "
                "fixed range of colours; save them as 8- or 16-bit images",
            )
            + ", then run the command again"
        )


def shapes_split(spec: str | os.PathLike[str]) -> str | None:
    """The split of a bundled SOURCE (``shapes``, ``shapes:composite``); ``None`` for a folder."""
    text = os.fspath(spec)
    if text not in SHAPES_SOURCES:
        return None
    return text.partition(":")[2] or "shapes"


def shapes_source(split: str) -> str:
    """The SOURCE of the bundled images of ``split``: the inverse of `shapes_split`."""
    return "shapes" if split == "shapes" else f"shapes:{split}"


def _shapes(text: str, images: int | None, seed: int) -> Source:
    from ctc_plugin.datasets.splits import SPLITS

    if images is None or images < 1:
        raise SourceError(
            f"SOURCE {text} needs the number of images: give --images N (N at least 1)"
        )
    if seed < 0:
        raise SourceError(f"the shapes seed must be non-negative, got {seed}")
    split = shapes_split(text) or "shapes"
    from ctc_plugin.datasets.dataset import ShapesDataset

    data = ShapesDataset(split, size=images, seed=seed)
    refs = tuple(ImageRef(i, f"{split}-{i}", int(data.scene(i)[1])) for i in range(images))
    return Source(text, "shapes", refs, tuple(SPLITS[split]), split=split, seed=seed)


def _image_files(root: Path, others: list[Path]) -> Iterator[Path]:
    """Every image file under ``root``, symbolic links to folders followed (as ImageFolder).

    The other files (not hidden) are appended to ``others``. Hidden files and folders
    (``.name``) are skipped. A link back to a folder above it (a
    cycle) is not followed again, so the walk ends; two links to one folder are both read, as
    torchvision's ``ImageFolder`` reads them.
    """
    above: dict[str, frozenset[tuple[int, int]]] = {os.fspath(root): frozenset({_key(root)})}
    for folder, subfolders, names in os.walk(root, followlinks=True):
        chain = above.pop(folder)
        kept = []
        for name in subfolders:
            key = _key(Path(folder, name))
            if not name.startswith(".") and key not in chain:
                kept.append(name)
                above[os.path.join(folder, name)] = chain | {key}
        subfolders[:] = kept
        for name in names:
            path = Path(folder, name)
            if name.startswith("."):
                continue
            if is_image_file(name):
                yield path  # a dangling link too: resolve_source names it
            else:
                others.append(path)


def _key(folder: Path) -> tuple[int, int]:
    """A folder's identity on disk (device, inode), the same through every link to it."""
    stat = folder.stat()
    return stat.st_dev, stat.st_ino
