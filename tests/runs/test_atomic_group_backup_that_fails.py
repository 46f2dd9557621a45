"""``write_atomic_group`` when taking a backup of the previous files fails (no space, say).

Before, the backups taken before the failing one were not recorded, so they stayed beside the
files as ``.tmp-*`` leftovers (removed as stale in run folders, kept forever beside ``--save``
files); a copy cut short (file systems without hard links) was left half-written too.
"""

from __future__ import annotations

import errno
import os
import shutil

import pytest

from ctc_plugin.resumable import atomic


def _group(folder, text: str):
    def write(stream):
        stream.write(text.encode())

    return [(folder / "a.npz", write), (folder / "a.json", write)]


def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_second_backup_that_fails_leaves_no_temporary_and_the_old_files(tmp_path, monkeypatch):
    atomic.write_atomic_group(_group(tmp_path, "old"))
    real = atomic._backup
    taken = []

    def second_fails(path):
        if taken:
            _no_space()
        taken.append(real(path))
        return taken[-1]

    monkeypatch.setattr(atomic, "_backup", second_fails)
    with pytest.raises(OSError, match="No space"):
        atomic.write_atomic_group(_group(tmp_path, "new"))
    assert sorted(os.listdir(tmp_path)) == ["a.json", "a.npz"]
    assert (tmp_path / "a.npz").read_text() == (tmp_path / "a.json").read_text() == "old"


def test_a_copied_backup_cut_short_is_removed(tmp_path, monkeypatch):
    atomic.write_atomic_group(_group(tmp_path, "old"))
    monkeypatch.setattr(atomic.os, "link", _no_space)  # a file system without hard links

    def half_copy(source, target):
        with open(target, "w") as stream:
            stream.write("ol")
        _no_space()

    monkeypatch.setattr(shutil, "copy2", half_copy)
    with pytest.raises(OSError, match="No space"):
        atomic.write_atomic_group(_group(tmp_path, "new"))
    assert sorted(os.listdir(tmp_path)) == ["a.json", "a.npz"]
