"""``write_atomic_group`` never leaves a group half new, half old, also when interrupted.

Files that belong together (the ``.npz`` of ``--save`` and the ``.json`` describing it) are
never one new, one old: the renames run one after the other, and a ``KeyboardInterrupt``
(Ctrl-C) after the first puts the previous files back from their backups.
"""

from __future__ import annotations

import os

import pytest

from ctc_plugin.resumable import atomic


def test_an_interrupt_between_the_renames_leaves_the_previous_pair(tmp_path, monkeypatch):
    data, summary = tmp_path / "run.npz", tmp_path / "run.json"
    data.write_bytes(b"old data")
    summary.write_bytes(b"old summary")
    real_replace = os.replace

    def interrupted_at_the_summary(source, target, *args, **kwargs):
        if os.fspath(target) == os.fspath(summary):
            raise KeyboardInterrupt
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "replace", interrupted_at_the_summary)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_atomic_group(
            [
                (data, lambda stream: stream.write(b"new data")),
                (summary, lambda stream: stream.write(b"new summary")),
            ]
        )
    monkeypatch.undo()
    pair = (data.read_bytes(), summary.read_bytes())
    assert pair in {(b"old data", b"old summary"), (b"new data", b"new summary")}, pair
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "run.npz"]
