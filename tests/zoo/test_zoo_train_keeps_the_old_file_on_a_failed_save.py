"""``ctc-plugin zoo train`` never leaves a half-written weight file behind."""

from __future__ import annotations

import errno

import torch

from ctc_plugin import zoo
from ctc_plugin.cli import main
from ctc_plugin.zoo import training


def test_a_save_that_fails_midway_keeps_the_previous_file(tmp_path, monkeypatch, capsys):
    previous = tmp_path / "vgg-shapes.pt"
    torch.save(zoo.build("vgg", 6).state_dict(), previous)
    before = previous.read_bytes()
    monkeypatch.setattr(zoo, "train_family", lambda family, *_, **__: zoo.build(family, 6))
    monkeypatch.setattr(training, "evaluate", lambda *args, **kwargs: 1.0)

    def disk_full(obj, file, *args, **kwargs):
        if hasattr(file, "write"):
            file.write(b"PK\x03\x04 half a file")
        else:
            with open(file, "wb") as handle:
                handle.write(b"PK\x03\x04 half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    status = main(["zoo", "train", "vgg", "--out", str(tmp_path)])
    assert status == 2
    assert "No space left on device" in capsys.readouterr().err
    assert previous.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["vgg-shapes.pt"]
