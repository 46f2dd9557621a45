"""Reading ``torch.save`` files as data, with one clear message per kind of damage; writing them.

Every loader of the package ([`ctc_plugin.zoo.load`][ctc_plugin.zoo.load],
[`ctc_plugin.zoo.load_torchvision`][ctc_plugin.zoo.load_torchvision],
`ctc_plugin.Explainer.load`, training checkpoints, SAM checkpoints) reads its file through
[`read_data_file`][ctc_plugin.files.read_data_file], so a damaged file gives the same kind of
message everywhere: ``could not read <what> from <path>: <what is wrong>``. The reasons are: a
missing file, a folder, an empty file, a truncated or corrupt archive (the CRC-32 of every record of
a zip archive is checked, so flipped bytes inside the tensors are caught too), an archive written
by a newer torch (its format version and the newest this torch reads), a truncated or corrupt
safetensors file (``.safetensors`` files load through ``torch.load`` too), a TorchScript
archive (``torch.jit.save``: a program, not data), a file that ``torch.save`` did not write, and
objects other than tensors and plain data (a data-only load
refuses them; the message names the first such object). No message advises an unsafe load.

A file of the shipped weights folder is first checked against the sha256 manifest of
[`ctc_plugin.weights`][ctc_plugin.weights], the owner of the shipped files. The package's
``torch.save`` files are written by [`write_torch_file`][ctc_plugin.files.write_torch_file].
"""

from __future__ import annotations

import io
import re
import sys
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from ctc_plugin.weights import file_identity, is_shipped, verify_shipped

#: The first bytes of a ``torch.save`` file: a zip archive (torch >= 1.6) or the legacy format
#: (a pickle protocol-2 header followed by torch's magic number).
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

#: The keys under which a checkpoint dict may hold the state dict, in the order they are tried:
#: ``torch.save({"state_dict": ...})`` (Lightning and others), ``{"model_state_dict": ...}``
#: (PyTorch's saving-and-loading tutorial), ``{"model": ...}`` (timm, DeiT).
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")

#: Key prefixes that wrappers add to a state dict: ``nn.DataParallel`` and
#: ``DistributedDataParallel`` (``module.``) and ``torch.compile`` (``_orig_mod.``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

#: How many keys (and size mismatches) of each kind a message on weights that do not fit shows.
SHOWN_KEYS = 3

#: A line of torch's ``load_state_dict`` error listing missing or unexpected keys.
_KEY_LIST = re.compile(r"^((?:Missing|Unexpected) key\(s\) in state_dict): (.*?)\.?\s*$", re.S)


#: Zip archives whose CRC-32s were checked in this process, keyed by `file_identity`.
_INTACT: set[tuple[str, int, int, int]] = set()


def _check_archive(path: Path) -> str | None:
    """Return what is wrong with a zip archive's structure or CRC-32s (``None``: intact).

    Records stored with a CRC-32 of 0 (``torch.save`` with CRC computation switched off) cannot
    be checked and are skipped.
    """
    key = file_identity(path)
    if key in _INTACT:
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 or info.is_dir():
                    continue
                with archive.open(info) as record:
                    while record.read(1 << 20):
                        pass
    except zipfile.BadZipFile as error:
        if "CRC" in str(error):
            name = str(error).rsplit(" ", 1)[-1]
            return (
                f"it is corrupt: the record {name} fails its CRC-32 check (bytes changed after "
                "it was written); copy or download it again"
            )
        return (
            f"it is a truncated or corrupt zip archive ({error}); the copy or download was "
            "probably incomplete, copy it again"
        )
    except (EOFError, OSError, UnicodeDecodeError, ValueError, NotImplementedError) as error:
        return (
            f"it is a truncated or corrupt zip archive ({type(error).__name__}: {error}); "
            "copy it again"
        )
    _INTACT.add(key)
    return None


def _is_torchscript(path: Path) -> bool:
    """Whether a zip archive was written by ``torch.jit.save`` (it holds ``constants.pkl``).

    torch tells TorchScript archives apart the same way; checking first keeps its warning
    ("'torch.load' received a zip file that looks like a TorchScript archive") from the user.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(name.split("/", 1)[-1] == "constants.pkl" for name in names)


#: What a TorchScript file is, and what to give instead.
_TORCHSCRIPT = (
    "it is a TorchScript archive (written by torch.jit.save or scripted_model.save), not a "
    "state dict; save the model's weights with torch.save(model.state_dict(), path) and give "
    "that file"
)


def _refused_object(error: BaseException) -> str | None:
    """The first object a data-only ``torch.load`` refused, if that is why it failed."""
    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    return match[1] if match else None


#: torch's error for an archive whose format version is newer than this torch reads.
_NEWER_FORMAT = re.compile(
    r"PyTorch file with version (\d+), but the maximum supported version for reading is (\d+)"
)


def _safetensors_failure(error: BaseException) -> bool:
    """Whether ``error`` comes from reading a safetensors file (``torch.load`` of one)."""
    missing = isinstance(error.__cause__, ImportError) and "safetensors" in str(error)
    return missing or type(error).__module__.split(".", 1)[0] == "safetensors"


def _names_a_loaded_object(name: str) -> bool:
    """Whether ``module.attribute`` names an object of an already imported module (no import).

    A truncated legacy file can stop inside a name (``torch._ut``); a real refused object has a
    complete name. Nothing is imported to find out.
    """
    module, _, attribute = name.rpartition(".")
    return bool(attribute) and hasattr(sys.modules.get(module), attribute)


def describe_load_failure(path: str | Path, error: BaseException) -> str:
    """Say what is wrong with a file that ``torch.load(..., weights_only=True)`` failed on.

    The one place where torch's failures are classified: it looks at the file (its first bytes)
    and at the error, and returns a sentence for the user that never repeats torch's advice to
    load without ``weights_only``.
    """
    path = Path(path)
    magics = (_ZIP_MAGIC, _LEGACY_MAGIC)
    if isinstance(error, IsADirectoryError) or path.is_dir():
        return "it is a folder, not a file; give the path of the file inside it"
    if isinstance(error, FileNotFoundError) or not path.exists():
        return "the file does not exist"
    try:
        with path.open("rb") as handle:
            head = handle.read(len(_LEGACY_MAGIC))
    except OSError as failure:
        return f"it cannot be opened ({failure.strerror or type(failure).__name__})"
    if not head:
        return "the file is empty (0 bytes); the save or copy that wrote it did not finish"
    if len(head) < len(_LEGACY_MAGIC) and any(m.startswith(head) for m in magics):
        return f"it is truncated: it holds only {len(head)} byte{'s' * (len(head) > 1)}"
    if _safetensors_failure(error):
        if isinstance(error.__cause__, ImportError):  # torch's note that safetensors is missing
            return (
                "it is a safetensors file, and reading it needs the safetensors package "
                "(pip install safetensors)"
            )
        return f"it is a truncated or corrupt safetensors file ({error}); copy it again"
    legacy = head.startswith(_LEGACY_MAGIC)
    refused = _refused_object(error)
    if refused is not None and (not legacy or _names_a_loaded_object(refused)):
        # zip archives passed their CRC-32 check; a legacy file is believed when the name is
        # complete (a truncated one stops inside a name)
        return (
            f"it holds Python objects other than tensors and plain data (the first is "
            f"{refused}), which this package does not load because unpickling them can run "
            f"code; save a state dict of tensors instead (torch.save(model.state_dict(), path))"
        )
    if head.startswith(_ZIP_MAGIC) or head.startswith(b"PK\x05\x06"):
        problem = _check_archive(path)
        if problem is not None:
            return problem
        if _is_torchscript(path):
            return _TORCHSCRIPT
        newer = _NEWER_FORMAT.search(str(error))
        if newer is not None:
            return (
                f"it was written by a newer torch (format version {newer[1]}; this torch, "
                f"{torch.__version__}, reads up to version {newer[2]}); upgrade torch, or have "
                "the torch that wrote it save the weights again in a format this one reads"
            )
        if "PytorchStreamReader" in str(error) or isinstance(error, EOFError):
            return "it is a truncated or corrupt torch.save archive; copy it again"
        return "it is a zip archive, but not one written by torch.save"
    if legacy:
        return (
            "it is a truncated or corrupt torch.save file (legacy format); copy it again, or "
            "save it again with a current torch"
        )
    for magic in magics:  # one changed byte in the signature: damage, not a foreign file
        if len(head) >= len(magic) and sum(a != b for a, b in zip(head, magic)) == 1:
            return (
                f"it is a corrupt torch.save file: its signature is damaged (starts with "
                f"{head[: len(magic)]!r} instead of {magic!r}); copy it again"
            )
    if head.startswith(b"\x80"):
        return "it is a plain pickle, not a file written by torch.save"
    return f"it is not a file written by torch.save (it starts with {head[:8]!r})"


def read_data_file(path: str | Path, what: str) -> Any:
    """Load a ``torch.save`` file as data only (``weights_only=True``), with clear errors.

    A file of the shipped weights folder is first checked against the manifest; any other zip
    archive has the CRC-32 of each record checked (once per process per file version), so a
    flipped byte is an error instead of silently different weights.

    Args:
        path: The file.
        what: What the file is, for error messages (e.g. ``"explainer file"``).

    Raises:
        FileNotFoundError: If the file (or, for a shipped file, the manifest) does not exist.
        ValueError: ``could not read <what> from <path>: <reason>`` for a folder, an empty,
            truncated or corrupt file (safetensors files included), an archive written by a
            newer torch, a TorchScript archive, a file not written by ``torch.save``, or one
            holding objects other than tensors and plain data; for a
            shipped file whose digest differs from the manifest, the expected and actual sha256
            and the fix.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{what} not found: {path}; give the path of a local file (nothing is downloaded)"
        )
    if path.is_file() and is_shipped(path):
        verify_shipped(path)  # before anything else: even an empty shipped file is a mismatch
    elif path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as handle:
            zipped = handle.read(4) == _ZIP_MAGIC
        problem = _check_archive(path) if zipped else None
        if problem is None and zipped and _is_torchscript(path):
            problem = _TORCHSCRIPT
        if problem is not None:
            raise ValueError(f"could not read {what} from {path}: {problem}")
    if path.is_file() and path.stat().st_size > 0:
        try:
            with warnings.catch_warnings():  # torch's note on a foreign pickle protocol
                warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a corrupt or foreign file
            raise ValueError(
                f"could not read {what} from {path}: {describe_load_failure(path, error)}"
            ) from None  # torch's own message may advise an unsafe load
    reason = describe_load_failure(path, IsADirectoryError() if path.is_dir() else EOFError())
    raise ValueError(f"could not read {what} from {path}: {reason}")


def read_state_dict(path: str | Path, what: str = "weights") -> dict[str, Tensor]:
    """Read a state dict saved with ``torch.save``, as data only (``weights_only=True``).

    A checkpoint dict holding the state dict under one of the keys of ``STATE_DICT_KEYS``
    (``"state_dict"``; ``"model_state_dict"``, as in PyTorch's tutorial; ``"model"``, as in
    timm's and DeiT's checkpoints) is accepted too, next to anything else (an optimizer state,
    the epoch). The file is read by [`read_data_file`][ctc_plugin.files.read_data_file]: a
    shipped file is checked against the weights manifest, any other one for truncation and
    corruption, each with one clear message.

    Args:
        path: The file.
        what: What the file is, for error messages (e.g. ``"backbone weights"``).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not a readable state dict (the message names the path and what is
            wrong: empty, truncated or corrupt, not a ``torch.save`` file, objects other than
            tensors, a folder, a shipped file that differs from the manifest, or a dict of other
            things, whose top-level keys it lists).
    """
    state = read_data_file(path, what)
    if isinstance(state, dict) and not _is_state_dict(state):
        state = next((state[k] for k in STATE_DICT_KEYS if _is_state_dict(state.get(k))), state)
    if not _is_state_dict(state):
        if isinstance(state, dict):
            keys = [repr(k) for k in list(state)[:12]] + ["..."] * (len(state) > 12)
            held = f"a dict whose top-level keys are {', '.join(keys)}"
        else:
            held = f"a {type(state).__name__}"
        wrapped = ", ".join(f"{k!r}" for k in STATE_DICT_KEYS)
        raise ValueError(
            f"{path} does not hold a state dict (a mapping of names to tensors, on its own or "
            f"under one of the keys {wrapped}): it holds {held}; save the state dict on its own "
            "(torch.save(model.state_dict(), path), or torch.save(checkpoint[key], path))"
        )
    return state


def _is_state_dict(value: Any) -> bool:
    """Whether ``value`` is a mapping of names to tensors."""
    return isinstance(value, dict) and all(isinstance(v, Tensor) for v in value.values())


def write_torch_file(path: str | Path, payload: Any) -> None:
    """``torch.save(payload)`` to ``path``, atomically, with the system's error when it fails.

    The archive is made in memory and written in one piece through
    [`write_atomic`][ctc_plugin.resumable.atomic.write_atomic] (the previous file stays whole
    on a failure): ``torch.save`` straight into a file turns a full disk into ``RuntimeError:
    [enforce fail at inline_container.cc] unexpected pos``, where this gives ``OSError: [Errno
    28] No space left on device``.
    """
    from ctc_plugin.resumable.atomic import write_atomic

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getbuffer()
    write_atomic(Path(path), lambda stream: stream.write(data))


def unwrapped_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the key prefix a wrapper or a training framework added to every key.

    A state dict saved from ``nn.DataParallel(model)``, ``DistributedDataParallel(model)`` or
    ``torch.compile(model)`` has every key prefixed (`WRAPPER_PREFIXES`); the prefix is dropped
    when every key of ``state`` has it and no key of ``model`` does. A checkpoint of a module
    that holds the model as an attribute (a Lightning module's ``model.``, ``net.``) has the
    model's keys under that name, beside what else the module holds (a loss's class weights,
    ``loss_fn.weight``): the keys under the one name whose rest are exactly the model's keys
    are taken, without it; where several names hold such keys (``model.`` and ``ema_model.``),
    none is chosen and loading names the keys. ``state`` itself is not changed.
    """
    own = model.state_dict().keys()
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state) and not any(
                key.startswith(prefix) for key in own
            ):
                state = _without_prefix(state, prefix)
                stripped = True
    if set(state) == set(own):
        return state
    matching = []
    for holder in sorted({key.split(".", 1)[0] for key in state}):
        prefix = f"{holder}."
        held = {key: value for key, value in state.items() if key.startswith(prefix)}
        if {key.removeprefix(prefix) for key in held} == set(own):
            matching.append((prefix, held))
    if len(matching) == 1:
        return _without_prefix(*reversed(matching[0]))
    return state  # none, or several (a model and its EMA copy): loading names the keys


def _without_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A copy of ``state`` (its metadata too) without ``prefix`` on its keys."""
    metadata = getattr(state, "_metadata", None)
    state = OrderedDict(state)
    if metadata is not None:
        state._metadata = type(metadata)(metadata)  # type: ignore[attr-defined]
    consume_prefix_in_state_dict_if_present(state, prefix)
    return state


def short_load_error(message: str) -> str:
    """Torch's ``load_state_dict`` error with each key list cut to its count and first keys.

    A weight file of another model can miss and hold a hundred keys each; the message keeps
    torch's first line, the count of each kind and its first
    ``SHOWN_KEYS`` keys and size mismatches.
    """
    head, *lines = message.split("\n\t")
    parts, mismatches = [head], []
    for line in lines:
        listed = _KEY_LIST.match(line)
        if line.startswith("size mismatch for "):
            mismatches.append(line.strip().rstrip(".").removeprefix("size mismatch for "))
        elif listed:
            keys = re.findall(r'"([^"]*)"', listed[2])
            shown = ", ".join(f'"{key}"' for key in keys[:SHOWN_KEYS])
            more = f", ... ({len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
            parts.append(f"{listed[1]} ({len(keys)}): {shown}{more}.")
        else:
            parts.append(line.strip())
    if mismatches:
        more = len(mismatches) - SHOWN_KEYS
        shown = "; ".join(mismatches[:SHOWN_KEYS]) + (f"; ... ({more} more)" if more > 0 else "")
        parts.append(f"size mismatch for {len(mismatches)} tensor(s): {shown}.")
    return " ".join(parts)


def cache_root() -> Path:
    """The package's cache folder, an absolute path.

    ``$CTC_PLUGIN_CACHE``, else ``$XDG_CACHE_HOME/ctc-plugin``, else ``~/.cache/ctc-plugin``.
    Each cache has a folder of its own inside it: ``masks`` (segmenters' feature masks,
    `ctc_plugin.features.cache.default_cache_dir`) and ``kernels`` (the compiled ``"reference"``
    formula, `ctc_plugin.ctc.native.cache_directory`).
    """
    import os

    configured = os.environ.get("CTC_PLUGIN_CACHE")
    if configured:
        return Path(configured).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return (Path(base).expanduser() / "ctc-plugin").absolute()
