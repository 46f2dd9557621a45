"""``explain a.png ./a.png``: one file named twice is explained once, and the command says so.

It was explained twice: two identical rows in the figure and the saved data, and the
once-per-run warnings (Lime's all-zero scores, Integrative CAM's zero maps) counted it twice.
"""

from __future__ import annotations

import json

from ctc_plugin.cli import main

FAST = ["--model", "resnet", "--resize", "32", "--segmenter", "grid", "--segments", "4"]


def test_a_file_named_twice_is_explained_once(photo, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(photo.parent)
    save = tmp_path / "data.npz"
    argv = ["explain", str(photo), "./photo.png", "photo.png", *FAST, "--no-progress",
            "--out", str(tmp_path / "fig.png"), "--save", str(save)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("photo.png: 40x30") == 1, printed
    assert f"note: {photo} is given 3 times (as photo.png): explained once" in printed
    images = json.loads(save.with_suffix(".json").read_text())["images"]
    assert len(images) == 1


def test_distinct_files_of_one_name_in_two_folders_are_both_explained(photo, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "photo.png").write_bytes(photo.read_bytes())
    argv = ["explain", str(photo), str(other / "photo.png"), *FAST, "--no-progress",
            "--out", str(tmp_path / "fig.png")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("photo.png: 40x30") == 2 and "explained once" not in printed
