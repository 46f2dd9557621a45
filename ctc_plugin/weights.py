"""The shipped weight files: where they are, what they are called, and their sha256 manifest.

The one owner of the files shipped in the package (the zoo classifiers and their Explainers):
[`ctc_plugin.zoo`][ctc_plugin.zoo] asks it for the path of a classifier or an Explainer file,
[`ctc_plugin.files.read_data_file`][ctc_plugin.files.read_data_file] asks it whether a file is
shipped and checks it, and the writers of weight files (``ctc-plugin zoo train``,
``Explainer.save``) record what they wrote here.

The folder [`WEIGHTS_DIR`][ctc_plugin.weights.WEIGHTS_DIR] holds the files and their manifest
[`MANIFEST_NAME`][ctc_plugin.weights.MANIFEST_NAME] (one ``<sha256>  <file name>`` line per file,
the format of ``sha256sum``). A file whose digest differs from its line is refused with the expected
and the actual digest. Each file is hashed once per process (again only when its size or
modification time changes). ``ctc-plugin zoo train`` and ``Explainer.save`` update the entry of a
file they write into that folder; ``ctc-plugin zoo manifest`` (or
[`write_manifest`][ctc_plugin.weights.write_manifest]) rewrites the whole manifest after weights
were replaced by other means.

File names: ``<family>-<split>.pt`` for a zoo classifier, ``explainer-<family>-<split>.pt`` for its
default Explainer and ``explainer-<family>-<split>-<kind>.pt`` for another kind (families and
splits hold no ``-``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

#: The folder of the shipped weight files and of their manifest.
WEIGHTS_DIR = Path(__file__).parent / "zoo" / "weights"

#: Name of the manifest file inside the shipped weights folder.
MANIFEST_NAME = "SHA256SUMS"

#: The command that rewrites the manifest from the files on disk.
MANIFEST_COMMAND = "ctc-plugin zoo manifest"

#: Digests and manifests already read in this process, keyed by `file_identity`.
_DIGESTS: dict[tuple[str, int, int, int], str] = {}
_MANIFESTS: dict[tuple[str, int, int, int], dict[str, str]] = {}


def file_identity(path: Path) -> tuple[str, int, int, int]:
    """Resolved path, size, modification time and inode: a changed file gets a new key."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino


def classifier_path(family: str, split: str) -> Path:
    """Where the shipped zoo classifier ``family`` trained on ``split`` lives (existing or not).

    Names only; [`ctc_plugin.zoo.weights_path`][ctc_plugin.zoo.weights_path] checks the family
    and split first.
    """
    return WEIGHTS_DIR / f"{family}-{split}.pt"


def explainer_path(family: str, split: str, kind: str = "default") -> Path:
    """Where the shipped Explainer of kind ``kind`` for a zoo classifier lives (existing or not).

    Names only;
    [`ctc_plugin.zoo.explainers.explainer_path`][ctc_plugin.zoo.explainers.explainer_path]
    checks the kind first.
    """
    suffix = "" if kind == "default" else f"-{kind}"
    return WEIGHTS_DIR / f"explainer-{family}-{split}{suffix}.pt"


def explainer_files() -> list[tuple[str, str, str]]:
    """The ``(family, split, kind)`` of every shipped Explainer file, sorted by file name."""
    found = []
    for path in sorted(WEIGHTS_DIR.glob("explainer-*.pt")):
        family, split, *kind = path.stem.removeprefix("explainer-").split("-", 2)
        found.append((family, split, kind[0] if kind else "default"))
    return found


def is_shipped(path: str | Path) -> bool:
    """Whether ``path`` lies directly in the shipped weights folder (manifest-checked)."""
    return Path(path).expanduser().resolve().parent == WEIGHTS_DIR.resolve()


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 digest of a file (cached per path, size and modification time)."""
    path = Path(path)
    key = file_identity(path)
    if key not in _DIGESTS:
        _DIGESTS[key] = content_sha256(path)
    return _DIGESTS[key]


def content_sha256(path: str | Path) -> str:
    """Return the hex sha256 digest of a file's content, read now (not cached)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: str | Path | None = None) -> dict[str, str]:
    """Return the manifest of ``folder`` (default: the shipped weights) as ``{name: sha256}``.

    Raises:
        FileNotFoundError: If the folder has no manifest.
        ValueError: If a line of it is not ``<64 hex digits>  <file name>``.
    """
    path = Path(folder if folder is not None else WEIGHTS_DIR) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"the weights manifest {path} is missing; reinstall ctc-plugin "
            f"(pip install --force-reinstall . in the package's clone) or, if you (re)trained "
            f"the weights in this folder, regenerate it with `{MANIFEST_COMMAND}`"
        )
    key = file_identity(path)
    if key not in _MANIFESTS:
        entries = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = re.fullmatch(r"([0-9a-f]{64}) [ *](\S.*)", line.strip())
            if match is None:
                raise ValueError(
                    f"line {number} of the weights manifest {path} is not '<sha256>  <name>'; "
                    f"regenerate it with `{MANIFEST_COMMAND}`"
                )
            entries[match[2]] = match[1]
        _MANIFESTS[key] = entries
    return dict(_MANIFESTS[key])


def _write_entries(folder: Path, entries: dict[str, str]) -> Path:
    """Write the manifest of ``folder`` atomically (a reader never sees half of it)."""
    from ctc_plugin.resumable.atomic import write_atomic

    path = folder / MANIFEST_NAME
    text = "".join(f"{digest}  {name}\n" for name, digest in sorted(entries.items()))
    write_atomic(path, lambda stream: stream.write(text.encode()))
    return path


def write_manifest(folder: str | Path | None = None) -> Path:
    """Rewrite the manifest of ``folder`` (default: the shipped weights) from its ``.pt`` files.

    This is what ``ctc-plugin zoo manifest`` runs; call it after replacing weight files by
    other means than ``ctc-plugin zoo train`` or ``Explainer.save`` (which keep their entry up
    to date). It records the files as they are, so only run it on files you trust.

    Returns:
        The path of the manifest.
    """
    from ctc_plugin.resumable.atomic import folder_lock

    folder = Path(folder if folder is not None else WEIGHTS_DIR)
    with folder_lock(folder, exclusive=True):
        entries = {path.name: file_sha256(path) for path in sorted(folder.glob("*.pt"))}
        return _write_entries(folder, entries)


def record_in_manifest(path: str | Path) -> bool:
    """Update the manifest entry of ``path`` if it lies in the shipped weights folder.

    Only that entry changes (a damaged neighbour is not blessed). Writers of weight files call
    this after writing; a file elsewhere is left alone. Writers in several threads or processes
    take turns (a lock on the folder), so each keeps its entry, and the manifest is replaced
    whole, never seen half written.

    Returns:
        Whether the manifest was updated.
    """
    from ctc_plugin.resumable.atomic import folder_lock

    path = Path(path).expanduser()
    if not is_shipped(path):
        return False
    folder = path.resolve().parent
    with folder_lock(folder, exclusive=True):
        try:
            entries = read_manifest(folder)
        except FileNotFoundError:
            entries = {}
        entries[path.name] = file_sha256(path)
        _write_entries(folder, entries)
    return True


def verify_shipped(path: str | Path) -> None:
    """Check a file of the shipped weights folder against the manifest (once per process).

    Raises:
        ValueError: If the file's sha256 differs from the manifest or it is not listed, naming
            the file, the expected and actual digests and the fix.
        FileNotFoundError: If the manifest is missing.
    """
    path = Path(path).expanduser()
    manifest = read_manifest(path.resolve().parent)
    actual = file_sha256(path)
    expected = manifest.get(path.name)
    if expected is None:
        raise ValueError(
            f"shipped weight file {path} is not listed in the weights manifest "
            f"{MANIFEST_NAME}; if you wrote it there on purpose, record it with "
            f"`{MANIFEST_COMMAND}`, otherwise reinstall ctc-plugin "
            f"(pip install --force-reinstall . in the package's clone)"
        )
    if actual != expected:
        raise ValueError(
            f"shipped weight file {path} is damaged: its sha256 is {actual}, the manifest "
            f"{MANIFEST_NAME} expects {expected}; reinstall ctc-plugin "
            f"(pip install --force-reinstall . in the package's clone), or if you retrained it "
            f"on purpose, regenerate the manifest with `{MANIFEST_COMMAND}`"
        )
