"""A checkpoint written by a newer torch is named as such, not as a foreign zip archive.

torch refuses an archive whose ``version`` record is above the newest format it reads; the
loaders say so, with both version numbers and the fix, instead of "not one written by
torch.save".
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from ctc_plugin import zoo
from ctc_plugin.files import read_state_dict


def _from_a_newer_torch(path: Path, version: bytes = b"99\n") -> Path:
    """A ``torch.save`` archive whose format version record is ``version`` (CRC-32s intact)."""
    plain = path.with_name("plain.pt")
    torch.save(zoo.build("vgg", 6).state_dict(), plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w") as target:
        records = [info for info in source.infolist() if info.filename.endswith("/version")]
        assert len(records) == 1  # the record torch checks
        for info in source.infolist():
            target.writestr(info, version if info in records else source.read(info))
    return path


def test_a_file_of_a_newer_format_names_both_versions_and_the_fix(tmp_path):
    path = _from_a_newer_torch(tmp_path / "newer.pt")
    with pytest.raises(RuntimeError, match="version 99"):  # what torch itself says
        torch.load(path, weights_only=True)
    with pytest.raises(ValueError) as caught:
        read_state_dict(path)
    message = str(caught.value)
    assert message.startswith(f"could not read weights from {path}: it was written by a newer")
    assert "format version 99" in message and "reads up to version" in message
    assert "upgrade torch" in message
    assert "not one written by torch.save" not in message


def test_every_loader_gives_the_same_reason(tmp_path):
    path = _from_a_newer_torch(tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="it was written by a newer torch .format version 99"):
        zoo.load("vgg", weights=path)
