"""The Explainer's training checkpoints: their contents, writing, reading, and resume checks.

The checks make a resumed run equal an uninterrupted one.
[`fit_explainer`][ctc_plugin.explainer.training.fit_explainer] writes a checkpoint after every
epoch (`save_checkpoint`, atomically) and resumes from one (`load_checkpoint`, then
`check_resume`, which refuses another architecture, classifier or training setting before
anything is loaded).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ctc_plugin.explainer.network import Explainer
from ctc_plugin.files import read_data_file, write_torch_file
from ctc_plugin.inputs import device_of
from ctc_plugin.resumable.atomic import remove_stale_temporaries
from ctc_plugin.wording import counted


class ResumeMismatchError(ValueError):
    """A checkpoint that ``fit(resume=...)`` refuses: trained with other settings.

    Attributes:
        differences: ``(name, there, now)`` of each setting or hyper-parameter that differs
            (``fit``'s argument names, the loaders' settings as dicts, their data as SHA-256
            digests), or ``("architecture", there, now)`` for an explainer of another
            architecture (the shape of each tensor that differs by name, ``None`` where it is
            missing), so that a caller can word them in its own terms (the command line names
            its options).
    """

    differences: tuple[tuple[str, Any, Any], ...] = ()


#: Tag stored in checkpoints written during
#: [`fit_explainer`][ctc_plugin.explainer.training.fit_explainer].
CHECKPOINT_FORMAT = "ctc-plugin-explainer-checkpoint/1"

#: Entries every checkpoint of `fit_explainer` holds (the first version's; later ones add more).
CHECKPOINT_ENTRIES = (
    "epoch", "explainer", "optimizer", "rng", "best_state", "best_epoch", "best_loss",
    "bad_epochs", "history", "hyperparameters",
)  # fmt: skip


def plain_baseline(baseline: float | Tensor) -> float | list[Any]:
    """``baseline`` as plain data, for comparing a resumed run's with the checkpoint's."""
    return baseline.detach().cpu().tolist() if isinstance(baseline, Tensor) else float(baseline)


def loader_settings(loader: Iterable[Any]) -> dict[str, Any]:
    """What a loader's batches depend on: batch size, data length, sampler, ``drop_last``.

    Values a loader does not have (a plain list of batches) are ``None``; its length then is
    the number of batches.
    """
    dataset = getattr(loader, "dataset", None)
    sampler = getattr(loader, "sampler", None)
    length = dataset if dataset is not None else loader
    settings = {
        "batch_size": getattr(loader, "batch_size", None),
        "length": len(length) if hasattr(length, "__len__") else None,
        "sampler": None if sampler is None else type(sampler).__name__,
        "drop_last": getattr(loader, "drop_last", None),
    }
    generators = loader_generators(loader)
    if generators:  # only then: checkpoints of loaders without one stay comparable
        settings["generators"] = len(generators)
    return settings


def data_digest(loader: Iterable[Any]) -> str | None:
    """SHA-256 of the tensors a loader's ``TensorDataset`` holds (``None`` for other data).

    Two loaders of equal length can hold other images or labels (the command line's
    ``--train-size 40 --two-object-fraction 0.5`` and ``--train-size 30 --two-object-fraction
    1``); a resume on other data would not equal an uninterrupted run. Each tensor's dtype,
    shape and bytes are hashed, a few rows at a time (a data set on a GPU is not copied whole).
    """
    import hashlib

    dataset = getattr(loader, "dataset", None)
    if not isinstance(dataset, torch.utils.data.TensorDataset):
        return None
    digest = hashlib.sha256()
    for tensor in dataset.tensors:
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}\0".encode())
        rows = max(1, (1 << 24) // max(1, tensor[:1].numel() * tensor.element_size()))
        for part in tensor.detach().split(rows) if tensor.dim() else [tensor.detach()]:
            flat = part.cpu().contiguous().reshape(-1)
            digest.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")
    return digest.hexdigest()


def host_rng_states() -> dict[str, list[Any]]:
    """NumPy's and Python's global random states as plain data (a checkpoint's ``host_rng``).

    A data set that draws its augmentations with ``numpy.random`` or ``random`` (the
    albumentations style) in the main process (``num_workers=0``) would see other draws after a
    resume than in an uninterrupted run, were they not saved with torch's. Workers are seeded by
    torch's generator, which every checkpoint holds.
    """
    name, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }


def set_host_rng_states(states: dict[str, list[Any]]) -> None:
    """Restore what `host_rng_states` saved."""
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def device_rng_state(model: torch.nn.Module) -> Tensor | None:
    """The random state of the CUDA device ``model`` trains on, or ``None`` elsewhere.

    Dropout in a network on a GPU draws from that device's generator, not from torch's CPU
    generator that every checkpoint holds: without it a resumed run would draw other masks.
    """
    device = device_of(model)
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_device_rng_state(model: torch.nn.Module, state: Tensor | None) -> None:
    """Restore what `device_rng_state` saved, on the device ``model`` is on now (a GPU)."""
    device = device_of(model)
    if state is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state, device)


def check_resumable_loaders(loaders: Iterable[Any]) -> None:
    """Refuse loaders whose batches after a resume would differ from an uninterrupted run's.

    A ``DataLoader`` with ``persistent_workers=True`` draws its workers' seeds from torch's
    generator once, at its first epoch; a resumed run draws them at the resumed epoch, which
    moves the shuffling and the workers' random transforms.

    Raises:
        ValueError: Naming the option to change.
    """
    for loader in loaders:
        if getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0):
            raise ValueError(
                "a DataLoader with persistent_workers=True draws its workers' seeds once, at "
                "its first epoch, so a resumed run would see other batches than an "
                "uninterrupted one; use persistent_workers=False with checkpoint= or resume="
            )


def loader_generators(loader: Iterable[Any]) -> list[torch.Generator]:
    """The loader's own random generators: ``DataLoader(generator=...)`` and its samplers'.

    A loader that shuffles with its own generator (not torch's default one, whose state every
    checkpoint holds) gives another order after a resume unless the generator's state is saved
    and restored with the checkpoint.
    """
    found: dict[int, torch.Generator] = {}
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (loader, sampler, batch_sampler, getattr(batch_sampler, "sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator):
            found.setdefault(id(generator), generator)
    return list(found.values())


def check_resume(
    state: dict[str, Any],
    explainer: Explainer,
    settings: dict[str, Any],
    resume: str | Path,
    digest: str | None,
    dtypes: list[str] | None,
) -> None:
    """Raise unless the checkpoint ``state`` fits ``explainer`` and was made with ``settings``.

    Checked before anything is loaded, so a refused resume leaves the explainer unchanged.
    ``digest`` and ``dtypes`` are this run's classifier's `state_digest` and
    `state_dtypes` (`ctc_plugin.module_state`).
    Checkpoints of older versions are checked only for what they record: without recorded
    settings, only for their architecture; without a classifier digest, not for the classifier.
    """
    missing = [key for key in CHECKPOINT_ENTRIES if key not in state]
    if missing:
        raise ValueError(
            f"checkpoint {str(resume)!r} is incomplete: it lacks {', '.join(missing)}, which "
            "every checkpoint of fit holds; resume from a checkpoint fit wrote, or train afresh "
            "without resume"
        )
    own = explainer.state_dict()
    for name in ("explainer", "best_state"):
        added = {key: own[key] for key in Explainer.ADDED_STATE}  # older checkpoints lack them
        theirs = {**added, **state.get(name, {})}
        mismatched = sorted(
            key
            for key in set(own) | set(theirs)
            if key not in own or key not in theirs or own[key].shape != theirs[key].shape
        )
        if mismatched:
            shown = ", ".join(mismatched[:5]) + (", ..." if len(mismatched) > 5 else "")
            error = ResumeMismatchError(
                f"checkpoint {str(resume)!r} was written for an explainer of another "
                f"architecture ({len(mismatched)} tensors differ in name or shape: {shown}); "
                "resume with an explainer built as the one that wrote it"
            )
            error.differences = (
                (
                    "architecture",
                    {key: _shape(theirs.get(key)) for key in mismatched},
                    {key: _shape(own.get(key)) for key in mismatched},
                ),
            )
            raise error
    trained_against = state.get("classifier_digest")  # older checkpoints: unknown
    if trained_against is not None and digest is not None and dtypes is not None:
        dtypes_there = state.get("classifier_dtypes", dtypes)
        dtype_note = f"dtype {', '.join(dtypes_there)} there, {', '.join(dtypes)} now"
        if trained_against != digest:
            also = f"; their {dtype_note}" if dtypes_there != dtypes else ""
            raise ValueError(
                f"checkpoint {str(resume)!r} was trained against another classifier (its "
                f"parameters and buffers differ: state-dict digest {trained_against[:12]} "
                f"there, {digest[:12]} now{also}); resume with the classifier (model and "
                "weights: --model and --weights on the command line) it was trained against, "
                "or train afresh without resume"
            )
        if dtypes_there != dtypes:
            raise ValueError(
                f"checkpoint {str(resume)!r} was trained against this classifier in another "
                f"dtype (its parameters and buffers hold the same values, but in {dtype_note});"
                f" cast the classifier back (e.g. classifier.to(torch.{dtypes_there[0]})) to "
                "resume, or train afresh without resume"
            )
    stored = state.get("settings")
    if stored is None:  # an older checkpoint: its settings are unknown
        return
    differ = [
        key
        for key, value in settings.items()
        if key in stored  # older checkpoints lack some (input_scale): unknown, not checked
        and stored[key] != value
        and not (key == "seed" and value is None)
    ]  # the seed only starts a run: a resume may leave it out (the checkpoint holds the RNG)
    if differ:
        listed = "; ".join(_difference(key, stored[key], settings[key]) for key in differ)
        data = (
            " and data (on the command line: the same --split, --train-size, --val-size and "
            "--two-object-fraction)"
            if any(key in DATA_SETTINGS for key in differ)
            else ""
        )
        error = ResumeMismatchError(
            f"checkpoint {str(resume)!r} was trained with other settings ({listed}); resume "
            f"with the same settings{data}, or train afresh without resume"
        )
        error.differences = tuple((key, stored[key], settings[key]) for key in differ)
        raise error


def _shape(tensor: Any) -> tuple[int, ...] | None:
    """A state entry's shape, or ``None`` where the state lacks it."""
    return None if tensor is None else tuple(tensor.shape)


#: Settings that are digests of the loaders' data (`data_digest`).
DATA_SETTINGS = ("train_data", "val_data")


def _difference(key: str, there: Any, now: Any) -> str:
    """One setting that differs, for `check_resume`'s message (a data digest shortened)."""
    if key in DATA_SETTINGS and isinstance(there, str) and isinstance(now, str):
        return f"{key}: other tensors (SHA-256 {there[:12]} there, {now[:12]} now)"
    return f"{key}: {there!r} there, {now!r} now"


def check_resumed_epochs(state: dict[str, Any], epochs: int, resume: str | Path) -> None:
    """Refuse to resume with fewer ``epochs`` than the checkpoint ``state`` already holds.

    ``epochs`` counts the resumed run's epochs too: fewer would train nothing and give a result
    of more epochs than asked for.

    Raises:
        ValueError: Naming the epochs the checkpoint holds.
    """
    done = int(state["epoch"])
    if epochs < done:
        raise ValueError(
            f"checkpoint {str(resume)!r} already holds {counted(done, 'epoch')}, more than "
            f"epochs={epochs} (--epochs): resume with {counted(done, 'epoch')} or more (more to "
            "train on), or train afresh without resume"
        )


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically, as [`write_atomic`][ctc_plugin.resumable.atomic.write_atomic].

    A failed write leaves the previous checkpoint as it was and no temporary file; the
    temporary files of killed writes (whose processes are gone) are removed before each write.
    """
    payload = {"format": CHECKPOINT_FORMAT, **state}
    remove_stale_temporaries(path.parent)
    write_torch_file(path, payload)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `fit_explainer` (data-only loading).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not such a checkpoint.
    """
    state = read_data_file(path, "training checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        from ctc_plugin.explainer.network import FILE_FORMAT

        what = (
            "it is an explainer written by Explainer.save (load it with Explainer.load)"
            if isinstance(state, dict) and state.get("format") == FILE_FORMAT
            else "it was not written by fit"
        )
        raise ValueError(
            f"{str(path)!r} is not an explainer training checkpoint: {what}; resume from the "
            "file fit wrote as checkpoint= (the command line's --checkpoint, by default the "
            "output file's name plus .ckpt)"
        )
    return state


def check_checkpoint_path(checkpoint: str | Path | None) -> None:
    """Refuse a ``checkpoint`` path that is a folder, before the first epoch is spent."""
    if checkpoint is not None and Path(checkpoint).is_dir():
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} is a folder; give the path of a file to write, "
            f"e.g. {str(Path(checkpoint) / 'explainer.ckpt')!r}"
        )
