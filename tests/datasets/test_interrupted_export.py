"""A killed export leaves no half-written file and no label table; writing it again ends it."""

from __future__ import annotations

import csv

import pytest
from PIL import Image

from ctc_plugin.datasets import ShapesDataset, write_split


def test_an_interrupted_export_holds_only_whole_files_and_can_be_finished(tmp_path, monkeypatch):
    data = ShapesDataset("shapes", size=4, seed=5, image_size=32)
    root = tmp_path / "export"
    real_save = Image.Image.save
    calls = 0

    def killed_on_the_seventh_file(self, fp, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 7:
            fp.write(b"\x89PNG\r\n\x1a\n")  # the first bytes (of the temporary), then Ctrl-C
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", killed_on_the_seventh_file)
    with pytest.raises(KeyboardInterrupt):
        write_split(data, root, show_progress=False)
    monkeypatch.undo()

    assert not (root / "labels.csv").exists()  # only a finished export has its label table
    finished = sorted(root.glob("*/[0-9]*.png"))
    assert len(finished) == 6
    for path in finished:
        with Image.open(path) as image:
            image.load()  # every file under its final name is whole

    write_split(data, root, show_progress=False)
    with open(root / "labels.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["index", "label", "class"] and len(rows) == 5
    assert [int(row[1]) for row in rows[1:]] == [data[i]["label"] for i in range(4)]
    assert len(sorted(root.glob("*/[0-9]*.png"))) == 12
    assert not list(root.rglob(".tmp-*"))
