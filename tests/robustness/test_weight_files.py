"""Lost and damaged files: the shipped weights' manifest and every loader's messages.

Shipped files (``ctc_plugin/zoo/weights``) are checked against the sha256 manifest, so any
changed byte is refused; user files get one clear message per kind of damage through every
loader, and never torch's advice to load unsafely.
"""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import tempfile
import traceback
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from ctc_plugin import files, weights, zoo
from ctc_plugin.adapters.sam import load_sam
from ctc_plugin.cli import main
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.checkpoints import load_checkpoint
from ctc_plugin.explainer.network import FILE_FORMAT, Explainer
from ctc_plugin.files import read_state_dict

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(weights.WEIGHTS_DIR.glob("*.pt"))
UNSAFE_ADVICE = ("weights_only=False", "`weights_only` set to `False`", "add_safe_globals")


def _shipped_loader(name: str) -> Callable[[], object]:
    """The public call that loads the shipped file ``name`` (a classifier or an explainer)."""
    stem = name.removesuffix(".pt")
    if not stem.startswith("explainer-"):
        family, split = stem.split("-")
        return lambda: zoo.load(family, split)
    family, split, *kind = stem.removeprefix("explainer-").split("-", 2)
    return lambda: zoo.load_explainer(family, split, kind[0] if kind else "default")


@contextmanager
def _weights_folder(*names: str) -> Iterator[Path]:
    """A temporary shipped weights folder holding copies of ``names`` and the real manifest."""
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        folder = Path(tmp) / "weights"
        folder.mkdir()
        for name in (*names, weights.MANIFEST_NAME):
            shutil.copyfile(weights.WEIGHTS_DIR / name, folder / name)
        patch.setattr(weights, "WEIGHTS_DIR", folder)
        yield folder


def _needs(name: str) -> tuple[str, ...]:
    """Files a shipped load reads: a class-specific explainer reads its classifier first."""
    if name.endswith("-class-specific.pt"):
        family, split = name.removeprefix("explainer-").split("-")[:2]
        return (name, f"{family}-{split}.pt")
    return (name,)


def _flip(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 1 << bit
    path.write_bytes(bytes(data))


def _assert_digest_error(error: BaseException, path: Path) -> None:
    message = str(error)
    expected = weights.read_manifest(path.parent)[path.name]
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    assert isinstance(error, ValueError), message
    assert str(path) in message and expected in message and actual in message, message
    assert "reinstall ctc-plugin" in message and weights.MANIFEST_COMMAND in message, message


def _shown(error: BaseException) -> str:
    """Everything a user sees of an uncaught error, chained causes included."""
    return "".join(traceback.format_exception(error))


# --- the manifest ------------------------------------------------------------------------------


def test_the_manifest_matches_the_shipped_files_on_disk():
    """A retrain or a hand-copied file without `ctc-plugin zoo manifest` fails here."""
    manifest = weights.read_manifest()
    assert len(SHIPPED) == 36
    assert sorted(manifest) == [path.name for path in SHIPPED], (
        f"the weights folder and its manifest differ; run `{weights.MANIFEST_COMMAND}`"
    )
    for path in SHIPPED:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert manifest[path.name] == digest, (
            f"{path.name} changed without its manifest entry; run `{weights.MANIFEST_COMMAND}`"
        )


def test_the_manifest_is_package_data():
    pyproject = (REPO / "pyproject.toml").read_text()
    section = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert f'"zoo/weights/{weights.MANIFEST_NAME}"' in section


@pytest.mark.parametrize("seed", [0])
def test_every_shipped_file_with_a_flipped_byte_is_refused_by_its_loader(seed):
    rng = random.Random(seed)
    for path in SHIPPED:
        with _weights_folder(*_needs(path.name)) as folder:
            copy = folder / path.name
            _flip(copy, rng.randrange(copy.stat().st_size), rng.randrange(8))
            with pytest.raises(ValueError) as caught:
                _shipped_loader(path.name)()
            _assert_digest_error(caught.value, copy)


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from([path.name for path in SHIPPED]),
    where=st.floats(0.0, 1.0, exclude_max=True),
    bit=st.integers(0, 7),
    truncate=st.booleans(),
)
def test_a_changed_or_truncated_shipped_file_never_loads(name, where, bit, truncate):
    with _weights_folder(name) as folder:
        copy = folder / name
        size = copy.stat().st_size
        if truncate:
            copy.write_bytes(copy.read_bytes()[: int(where * size)])
        else:
            _flip(copy, int(where * size), bit)
        with pytest.raises(ValueError) as caught:
            files.read_data_file(copy, "weights")
        _assert_digest_error(caught.value, copy)


def test_an_intact_copy_loads_and_is_hashed_once(monkeypatch):
    name = "resnet-shapes.pt"
    with _weights_folder(name) as folder:
        calls = []
        real = hashlib.sha256
        monkeypatch.setattr(weights.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
        first, second = zoo.load("resnet"), zoo.load("resnet")
        assert len(calls) == 1
        for key, value in first.state_dict().items():
            assert torch.equal(value, second.state_dict()[key])
        _flip(folder / name, 12345)  # a changed file is hashed again, and refused
        with pytest.raises(ValueError, match="is damaged"):
            zoo.load("resnet")


def test_unlisted_file_or_missing_manifest_in_the_weights_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)
    torch.save(zoo.build("resnet", 6).state_dict(), tmp_path / "resnet-shapes.pt")
    with pytest.raises(FileNotFoundError, match="manifest .*SHA256SUMS is missing; reinstall"):
        zoo.load("resnet")
    weights.write_manifest()
    torch.save(zoo.build("vgg", 6).state_dict(), tmp_path / "vgg-shapes.pt")
    with pytest.raises(ValueError, match="vgg-shapes.pt is not listed in the weights manifest"):
        zoo.load("vgg")
    assert zoo.load("resnet") is not None
    (tmp_path / weights.MANIFEST_NAME).write_text("not a manifest line\n")
    with pytest.raises(ValueError, match=f"line 1 .*{weights.MANIFEST_COMMAND}"):
        zoo.load("resnet")


def test_writers_keep_the_manifest_up_to_date(tmp_path, monkeypatch, capsys):
    from ctc_plugin import zoo as zoo_package
    from ctc_plugin.zoo import training

    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)
    # `ctc-plugin zoo train` writing into the weights folder (training itself stubbed out)
    monkeypatch.setattr(zoo_package, "train_family", lambda f, s, c, **options: zoo.build(f, 2))
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: 0.5)
    assert main(["zoo", "train", "vgg", "resnet", "--split", "composite"]) == 0
    assert sorted(weights.read_manifest()) == ["resnet-composite.pt", "vgg-composite.pt"]
    assert zoo.load("vgg", "composite") is not None
    # Explainer.save into the weights folder (as `ctc-plugin explainer train --out` does)
    path = Explainer(build_backbone("unet-small", 2, width=2), 2).save(
        tmp_path / "explainer-vgg-composite.pt"
    )
    assert Explainer.load(path) is not None
    assert weights.read_manifest()[path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
    # ... and elsewhere it writes no manifest
    Explainer(build_backbone("unet-small", 2, width=2), 2).save(tmp_path / "elsewhere" / "e.pt")
    assert not (tmp_path / "elsewhere" / weights.MANIFEST_NAME).exists()
    # `ctc-plugin zoo manifest` rewrites it from the files on disk
    (tmp_path / weights.MANIFEST_NAME).unlink()
    assert main(["zoo", "manifest"]) == 0
    assert "(3 files)" in capsys.readouterr().out
    assert len(weights.read_manifest()) == 3
    # one file is counted as one
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.pt").write_bytes(b"weights")
    assert main(["zoo", "manifest", "--folder", str(tmp_path / "one")]) == 0
    assert "(1 file)" in capsys.readouterr().out


# --- user files through every loader ---------------------------------------------------------

LOADERS: dict[str, tuple[str, Callable[[Path], object]]] = {
    "zoo.load": ("weights", lambda p: zoo.load("resnet", weights=p)),
    "zoo.load_torchvision": ("weights", lambda p: zoo.load_torchvision("resnet18", p)),
    "read_state_dict": ("weights", read_state_dict),
    "Explainer.load": ("explainer file", Explainer.load),
    "load_checkpoint": ("training checkpoint", load_checkpoint),
    "load_sam": ("SAM checkpoint", lambda p: load_sam(p, "tiny")),
}


class Opaque:
    """An arbitrary class: a data-only load refuses it."""


def _user_file() -> bytes:
    buffer = io.BytesIO()
    torch.save(Explainer(build_backbone("unet-small", 3, width=2), 3).state_dict(), buffer)
    return buffer.getvalue()


USER_FILE = _user_file()


def _write_flipped(path: Path, offset: int, bit: int = 0) -> None:
    path.write_bytes(USER_FILE)
    _flip(path, offset, bit)


def _tensor_offset(data: bytes) -> int:
    """Where the bytes of the last tensor record of a torch.save archive start."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        record = [info for info in archive.infolist() if "/data/" in info.filename][-1]
    header = data[record.header_offset : record.header_offset + 30]
    name_length, extra_length = (int.from_bytes(header[i : i + 2], "little") for i in (26, 28))
    return record.header_offset + 30 + name_length + extra_length


LEGACY = io.BytesIO()
torch.save({"w": torch.arange(6.0)}, LEGACY, _use_new_zipfile_serialization=False)


def _expect(loader: str, path: Path, reason: str, writer: Callable[[Path], object]) -> str:
    """Write the file, load it through ``loader`` and check the one clear message."""
    writer(path)
    what, load = LOADERS[loader]
    with pytest.raises(ValueError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"could not read {what} from {path}: "), message
    assert reason in message, message
    shown = _shown(caught.value)
    assert not any(advice in shown for advice in UNSAFE_ADVICE), shown
    return message


CASES: dict[str, tuple[str, Callable[[Path], object]]] = {
    "empty": ("the file is empty (0 bytes)", lambda p: p.write_bytes(b"")),
    "truncated zip": (
        "truncated or corrupt zip archive",
        lambda p: p.write_bytes(USER_FILE[: len(USER_FILE) // 2]),
    ),
    "truncated legacy": (
        "truncated or corrupt torch.save file (legacy format)",
        lambda p: p.write_bytes(LEGACY.getvalue()[:100]),
    ),
    "two bytes": ("it is truncated: it holds only 2 bytes", lambda p: p.write_bytes(b"PK")),
    "flipped tensor byte": (
        "fails its CRC-32 check",
        lambda p: _write_flipped(p, _tensor_offset(USER_FILE) + 3),
    ),
    "text": ("not a file written by torch.save (it starts with b'hello wo')", None),
    "png": ("not a file written by torch.save (it starts with b'\\x89PNG", None),
    "plain pickle": ("a plain pickle, not a file written by torch.save", None),
    "other zip": ("a zip archive, but not one written by torch.save", None),
    "module object": ("(the first is torch.nn.modules.linear.Linear)", None),
    "numpy array": ("other than tensors and plain data (the first is numpy.", None),
    "own class": (f"(the first is {__name__}.Opaque)", None),
    "legacy module": ("(the first is torch.nn.modules.linear.Linear)", None),
    "folder": ("it is a folder, not a file", lambda p: p.mkdir()),
}


def _write_other(case: str, path: Path) -> None:
    if case == "text":
        path.write_text("hello world, not weights\n" * 4)
    elif case == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    elif case == "plain pickle":
        import pickle

        path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    elif case == "other zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "hi")
    elif case == "module object":
        torch.save({"model": nn.Linear(2, 2)}, path)
    elif case == "numpy array":
        torch.save({"w": np.zeros(3)}, path)
    elif case == "own class":
        torch.save({"w": Opaque()}, path)
    elif case == "legacy module":
        torch.save(nn.Linear(2, 2), path, _use_new_zipfile_serialization=False)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_damaged_user_file_is_one_clear_message(tmp_path, loader, case):
    reason, writer = CASES[case]
    _expect(loader, tmp_path / "file.pt", reason, writer or (lambda p: _write_other(case, p)))


@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_missing_user_file_names_the_path(tmp_path, loader):
    path = tmp_path / "nowhere" / "file.pt"
    with pytest.raises(FileNotFoundError, match=str(path)):
        LOADERS[loader][1](path)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(loader=st.sampled_from(list(LOADERS)), where=st.floats(0.0, 1.0, exclude_max=True))
def test_a_user_file_truncated_anywhere_is_one_clear_message(tmp_path, loader, where):
    path = tmp_path / f"truncated-{loader}.pt"
    data = USER_FILE[: int(where * len(USER_FILE))]
    message = _expect(loader, path, "", lambda p: p.write_bytes(data))
    assert any(word in message for word in ("truncated", "empty")), message


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0.0, 1.0, exclude_max=True), bit=st.integers(0, 7))
def test_a_user_file_with_a_flipped_byte_never_loads_different_values(tmp_path, where, bit):
    """Without a manifest the zip CRC-32s catch the flip; else it was in bytes torch ignores."""
    path = tmp_path / "flipped.pt"
    _write_flipped(path, int(where * len(USER_FILE)), bit)
    try:
        state = read_state_dict(path)
    except ValueError as error:
        message = str(error)
        assert str(path) in message and ("corrupt" in message or "truncated" in message), message
        assert not any(advice in _shown(error) for advice in UNSAFE_ADVICE)
        return
    original = torch.load(io.BytesIO(USER_FILE), weights_only=True)
    assert state.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(state[key], value), key


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=300))
def test_arbitrary_bytes_are_one_clear_message(tmp_path, data):
    path = tmp_path / "junk.pt"
    message = _expect("read_state_dict", path, "", lambda p: p.write_bytes(data))
    reasons = ("not a file written by torch.save", "plain pickle", "truncated", "corrupt", "zip")
    assert any(reason in message for reason in reasons), message


# --- explainer files that lack entries or do not fit -------------------------------------------


def _explainer_payload(**changes: object) -> dict:
    explainer = Explainer(build_backbone("unet-small", 3, width=2), 3)
    payload = {
        "format": FILE_FORMAT,
        "config": explainer.config(),
        "state_dict": explainer.state_dict(),
        "metadata": {},
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"config": None}, "it lacks config;"),
        ({"state_dict": None}, "it lacks state_dict;"),
        ({"config": None, "state_dict": None}, "it lacks config, state_dict;"),
        ({"config": {"width": 2}}, "it lacks config['num_classes'], config['backbone'];"),
        ({"config": {"num_classes": 3, "width": 2}}, "it lacks config['backbone'];"),
    ],
)
def test_an_explainer_file_without_its_config_names_what_is_missing(tmp_path, changes, named):
    path = tmp_path / "explainer.pt"
    torch.save(_explainer_payload(**changes), path)
    with pytest.raises(ValueError) as caught:
        Explainer.load(path)
    message = str(caught.value)
    assert f"explainer file {str(path)!r} is incomplete: {named}" in message, message
    assert "Explainer.save" in message


def test_an_explainer_state_dict_that_does_not_fit_its_config(tmp_path):
    path = tmp_path / "explainer.pt"
    wider = Explainer(build_backbone("unet-small", 3, width=4), 3).state_dict()
    torch.save(_explainer_payload(state_dict=wider), path)
    with pytest.raises(ValueError, match=r"does not fit its config \{'num_classes': 3") as caught:
        Explainer.load(path)
    assert "size mismatch" in str(caught.value)
    config = {**Explainer(build_backbone("unet-small", 3, width=2), 3).config(), "colour": "red"}
    torch.save(_explainer_payload(config=config), path)
    with pytest.raises(ValueError, match="has a config this version cannot build"):
        Explainer.load(path)
