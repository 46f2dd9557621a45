"""Two writers of the same export PNG each write their own temporary file.

Every PNG was written under the fixed name ``.tmp-<name>``: a second export into the same folder
(another process, or a thread) opened that same file, so the first writer renamed the second's
half-written file into place.
"""

from __future__ import annotations

import io
import os
import threading

import numpy as np
from PIL import Image

from ctc_plugin.datasets import ShapesDataset, export, write_split
from ctc_plugin.resumable import atomic

_WAIT = 30  # seconds: only a broken test waits this long


def _write_half(encoded: bytes, fp, go_on: threading.Event, half_written: threading.Event):
    """Write ``encoded`` as PIL's save does (into ``fp``: a path or a handle), pausing half-way."""
    data = encoded
    handle = open(fp, "wb") if isinstance(fp, (str, os.PathLike)) else fp
    try:
        handle.write(data[: len(data) // 2])
        handle.flush()
        half_written.set()
        assert go_on.wait(_WAIT)
        handle.write(data[len(data) // 2 :])
    finally:
        if handle is not fp:
            handle.close()


def test_a_writer_never_renames_another_writers_half_written_file(tmp_path, monkeypatch):
    target = tmp_path / "00000.png"
    first, second = np.zeros((8, 8), np.uint8), np.full((8, 8), 255, np.uint8)
    real_save = Image.Image.save
    first_saved, second_half, second_go_on = (threading.Event() for _ in range(3))

    def save(self, fp, *args, **kwargs):
        if self.getpixel((0, 0)) == 0:  # the first writer: whole, then waits for the second
            real_save(self, fp, *args, **kwargs)
            first_saved.set()
            assert second_half.wait(_WAIT)
        else:  # the second writer starts once the first has written its file
            assert first_saved.wait(_WAIT)
            encoded = io.BytesIO()
            real_save(self, encoded, format="PNG")
            _write_half(encoded.getvalue(), fp, second_go_on, second_half)

    monkeypatch.setattr(Image.Image, "save", save)
    errors: list[BaseException] = []

    def run(array):
        try:
            export._to_png(array, target)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    writers = [threading.Thread(target=run, args=(array,)) for array in (first, second)]
    for writer in writers:
        writer.start()
    try:
        writers[0].join(_WAIT)  # the first writer is done: its file is in place, whole
        monkeypatch.undo()
        with Image.open(target) as image:
            assert (np.asarray(image) == first).all()
    finally:
        second_go_on.set()
        writers[1].join(_WAIT)
    assert not errors
    with Image.open(target) as image:
        assert (np.asarray(image) == second).all()  # the last writer's, whole
    assert [p.name for p in tmp_path.iterdir()] == ["00000.png"]


def test_a_rerun_removes_killed_writers_temporaries_in_the_image_folders(tmp_path):
    """The PNGs' temporaries lie in ``images/`` etc.; only those of writers gone are removed."""
    data = ShapesDataset("shapes", size=2, seed=5, image_size=32)
    root = write_split(data, tmp_path / "export", show_progress=False)
    dead = f".tmp-00000.png-{atomic._host()}-999999999-abcd1234"  # its writer was killed
    live = f".tmp-00001.png-{atomic._host()}-{os.getpid()}-abcd1234"  # a writer still running
    for folder in ("images", "evidence", "instances"):
        (root / folder / dead).write_bytes(b"\x89PNG")
        (root / folder / live).write_bytes(b"\x89PNG")
    write_split(data, root, show_progress=False)
    for folder in ("images", "evidence", "instances"):
        assert sorted(p.name for p in (root / folder).iterdir()) == [
            live,
            "00000.png",
            "00001.png",
        ]
