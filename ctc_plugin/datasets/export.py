"""Writing a split to disk (PNG images and masks) and the bundled sample images."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ctc_plugin.datasets.dataset import ShapesDataset
from ctc_plugin.resumable.atomic import remove_stale_temporaries, write_atomic

#: Where the bundled samples live.
SAMPLES_DIR = Path(__file__).parent / "samples"
#: The data-set item each bundled sample is: split -> (seed, index).
SAMPLES: dict[str, tuple[int, int]] = {"shapes": (7, 3), "composite": (7, 0)}
#: The file naming the data set an export folder holds (written first).
EXPORT_FILE = "export.json"
#: The export's folders of PNG files, one file per item each.
IMAGE_FOLDERS: tuple[str, ...] = ("images", "evidence", "instances")


def _to_png(array: np.ndarray, path: Path) -> None:
    """Write ``array`` as a PNG under a temporary name, then rename it: never half a file.

    The temporary name is the writer's own (`write_atomic`'s ``.tmp-<name>-<host>-<pid>-*``),
    so two exports into one folder never rename each other's half-written files; what a killed
    run left is removed when the export is written again. No ``fsync`` per image (a crash of
    the machine, unlike a killed run, may lose the last images: write the export again).
    """
    image = Image.fromarray(array)
    write_atomic(path, lambda handle: image.save(handle, format="PNG"), sync=False)


def write_split(dataset: ShapesDataset, directory: str | Path, show_progress: bool = True) -> Path:
    """Write every item of ``dataset`` to ``directory`` as PNG files.

    Layout: ``images/00000.png`` (RGB), ``evidence/00000.png`` (0 or 255),
    ``instances/00000.png`` (8-bit ids, 0 = background; the names have five digits, more
    above 100,000 images, so that they sort in index order), ``labels.csv``
    (columns ``index,label,class``) and ``export.json`` (the split, seed, size and image
    size of the data set).

    The folder must be new, empty, or an export of the same data set (same split, seed, size
    and image size, named by its ``export.json``: writing it again gives the same files, e.g.
    after an export was interrupted). Any other folder is refused, so that two data sets are
    never mixed in one folder.

    Every file is written under a temporary name and renamed into place, so no file is ever
    half-written, and ``labels.csv`` is written last: a folder without it holds an export that
    was interrupted (write it again to finish it).

    Args:
        dataset: The data set to write.
        directory: Output folder; created when missing.
        show_progress: Show a tqdm progress bar.

    Returns:
        The output folder.

    Raises:
        TypeError: If ``dataset`` is not a `ShapesDataset` (a ``Subset`` of one, say).
        ValueError: If ``directory`` is a file, or a folder holding other files than an export
            of this data set (the message says what it holds).
    """
    from tqdm.auto import tqdm

    if not isinstance(dataset, ShapesDataset):
        raise TypeError(
            f"write_split takes a ShapesDataset, got {type(dataset).__name__}; an export names "
            "its data set by split, seed, size and image size, so write "
            "ShapesDataset(split, size=N, seed=S) (its first N items) instead of a subset"
        )
    root = Path(directory).expanduser()
    identity = _identity(dataset)
    _check_folder(root, identity)
    root.mkdir(parents=True, exist_ok=True)
    marker = (json.dumps(identity, indent=1) + "\n").encode()
    write_atomic(root / EXPORT_FILE, lambda handle: handle.write(marker))
    for name in IMAGE_FOLDERS:
        (root / name).mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(root / name)  # of killed writers; running ones' are kept
    rows = [["index", "label", "class"]]
    digits = max(5, len(str(len(dataset) - 1)))
    for i in tqdm(range(len(dataset)), desc="writing", disable=not show_progress):
        item = dataset[i]
        stem = f"{i:0{digits}d}.png"
        image = (item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        _to_png(image, root / "images" / stem)
        _to_png(item["evidence"].numpy().astype(np.uint8) * 255, root / "evidence" / stem)
        _to_png(item["instances"].numpy().astype(np.uint8), root / "instances" / stem)
        rows.append([i, item["label"], dataset.classes[item["label"]]])
    table = io.StringIO(newline="")
    csv.writer(table).writerows(rows)
    write_atomic(root / "labels.csv", lambda handle: handle.write(table.getvalue().encode()))
    return root


def _identity(dataset: ShapesDataset) -> dict[str, object]:
    """What names the data set of an export: split, seed, size and image size."""
    return {
        "split": dataset.split,
        "seed": dataset.seed,
        "size": len(dataset),
        "image_size": dataset.image_size,
    }


def _check_folder(root: Path, identity: dict[str, object]) -> None:
    """Raise unless ``root`` is missing, empty or an export of the data set ``identity``."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is a file; give a folder to write the split to")
    if not root.exists():
        return
    if all(entry.name.startswith(".tmp-") for entry in root.iterdir()):
        remove_stale_temporaries(root)  # an export killed before its marker was in place
        if not any(root.iterdir()):
            return
    marker = root / EXPORT_FILE
    try:
        stored = json.loads(marker.read_text())
        if not isinstance(stored, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError):
        raise ValueError(
            f"{root} is not empty and holds no export of a data set ({EXPORT_FILE} is missing "
            "or damaged); give a new or empty folder, so that no stale file is mixed in"
        ) from None
    if stored != identity:
        differ = "; ".join(
            f"{key}: {stored.get(key)!r} there, {value!r} now"
            for key, value in identity.items()
            if stored.get(key) != value
        )
        raise ValueError(
            f"{root} holds an export of another data set ({differ}); give a new or empty "
            "folder, or delete this one first"
        )
    remove_stale_temporaries(root)  # only in a folder taken: another's files stay as they were


def sample_item(split: str = "shapes") -> dict:
    """Return the data-set item the bundled sample of ``split`` was drawn from."""
    seed, index = SAMPLES[split]
    return ShapesDataset(split, size=index + 1, seed=seed)[index]


def sample_path(split: str = "shapes", kind: str = "image") -> Path:
    """Return the path of a bundled sample file.

    Args:
        split: ``"shapes"`` or ``"composite"``.
        kind: ``"image"`` (the RGB PNG) or ``"evidence"`` (its ground-truth mask, 0 or 255).

    Returns:
        The path inside the installed package.

    Raises:
        ValueError: For an unknown split or kind.
    """
    if split not in SAMPLES or kind not in ("image", "evidence"):
        raise ValueError(f"no bundled sample for split={split!r}, kind={kind!r}")
    return SAMPLES_DIR / (f"{split}.png" if kind == "image" else f"{split}-evidence.png")


def write_samples(directory: str | Path = SAMPLES_DIR) -> None:
    """(Re)write the bundled samples of both splits into ``directory``."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for split in SAMPLES:
        item = sample_item(split)
        image = (item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        _to_png(image, root / f"{split}.png")
        _to_png(item["evidence"].numpy().astype(np.uint8) * 255, root / f"{split}-evidence.png")
