"""``write_atomic_group`` never leaves a group half new, half old, also when interrupted.

Files that belong together (the ``.npz`` of ``--save`` and the ``.json`` describing it) are
never one new, one old: the renames run one after the other, and a ``KeyboardInterrupt``
(Ctrl-C) after the first puts the previous files back from their backups.
"""

from __future__ import annotations

import os

import pytest

from ctc_plugin.resumable import atomic


def _interrupt_at(monkeypatch, path) -> None:
    """Make the rename onto ``path`` raise ``KeyboardInterrupt`` (Ctrl-C between the renames)."""
    real_replace = os.replace

    def interrupted(source, target, *args, **kwargs):
        if os.fspath(target) == os.fspath(path):
            raise KeyboardInterrupt
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "replace", interrupted)


def _write_pair(data, summary) -> None:
    atomic.write_atomic_group(
        [
            (data, lambda stream: stream.write(b"new data")),
            (summary, lambda stream: stream.write(b"new summary")),
        ]
    )


def test_an_interrupt_between_the_renames_leaves_the_previous_pair(tmp_path, monkeypatch):
    data, summary = tmp_path / "run.npz", tmp_path / "run.json"
    data.write_bytes(b"old data")
    summary.write_bytes(b"old summary")
    _interrupt_at(monkeypatch, summary)
    with pytest.raises(KeyboardInterrupt):
        _write_pair(data, summary)
    monkeypatch.undo()
    pair = (data.read_bytes(), summary.read_bytes())
    assert pair in {(b"old data", b"old summary"), (b"new data", b"new summary")}, pair
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "run.npz"]


def test_an_interrupt_removes_a_file_the_group_added_and_every_backup(tmp_path, monkeypatch):
    added, summary = tmp_path / "run.npz", tmp_path / "run.json"
    summary.write_bytes(b"old summary")
    _interrupt_at(monkeypatch, summary)
    with pytest.raises(KeyboardInterrupt):
        _write_pair(added, summary)
    # the group as it was: no run.npz, no backup
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    assert summary.read_bytes() == b"old summary"
