"""write_split refuses to mix two data sets in one folder."""

from __future__ import annotations

import json

import pytest

from ctc_plugin.datasets import ShapesDataset, write_split


def _dataset(size: int = 2, seed: int = 0) -> ShapesDataset:
    return ShapesDataset("shapes", size=size, seed=seed, image_size=32)


def test_an_export_names_its_data_set_and_can_be_written_again(tmp_path):
    root = write_split(_dataset(), tmp_path / "out", show_progress=False)
    identity = json.loads((root / "export.json").read_text())
    assert identity == {"split": "shapes", "seed": 0, "size": 2, "image_size": 32}
    write_split(_dataset(), root, show_progress=False)  # the same data set: rewritten
    assert sorted(p.name for p in (root / "images").iterdir()) == ["00000.png", "00001.png"]


@pytest.mark.parametrize(
    ("size", "seed", "named"), [(1, 0, "size: 2 there, 1 now"), (2, 3, "seed")]
)
def test_an_export_of_another_data_set_is_refused_and_kept(tmp_path, size, seed, named):
    root = write_split(_dataset(), tmp_path / "out", show_progress=False)
    with pytest.raises(ValueError, match=f"another data set .*{named}"):
        write_split(_dataset(size, seed), root, show_progress=False)
    assert (root / "images" / "00001.png").exists()
    assert json.loads((root / "export.json").read_text())["seed"] == 0


def test_a_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no export"):
        write_split(_dataset(), tmp_path, show_progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_failed_write_of_the_marker_leaves_no_half_file_and_can_be_done_again(
    tmp_path, monkeypatch
):
    """export.json was written in place: a full disk left half of it, and the same export was
    then refused as "holds no export of a data set"."""
    from ctc_plugin.resumable import atomic

    dataset = ShapesDataset(split="shapes", size=2, seed=1, image_size=32)
    written = atomic.os.replace

    def disk_full(source, destination):
        if str(destination).endswith("export.json"):
            raise OSError(28, "No space left on device")
        return written(source, destination)

    monkeypatch.setattr(atomic.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_split(dataset, tmp_path / "out")
    assert not (tmp_path / "out" / "export.json").exists()
    monkeypatch.setattr(atomic.os, "replace", written)
    write_split(dataset, tmp_path / "out")
    assert (tmp_path / "out" / "labels.csv").exists()


def test_an_export_killed_before_its_marker_was_renamed_can_be_done_again(tmp_path):
    """A killed writer's ``.tmp-export.json-<host>-<pid>-...`` made the folder "not empty"."""
    from ctc_plugin.resumable import atomic

    out = tmp_path / "out"
    out.mkdir()
    dead = f".tmp-export.json-{atomic._host()}-999999999-abcd1234"  # a writer no longer running
    (out / dead).write_text('{"split"')
    dataset = ShapesDataset(split="shapes", size=2, seed=1, image_size=32)
    write_split(dataset, out)
    assert (out / "labels.csv").exists()
    assert not list(out.glob(".tmp-*"))


def test_a_folder_with_a_tilde_goes_to_the_home_folder(tmp_path, monkeypatch):
    """A folder named '~' was made in the working directory (the loaders expand '~')."""
    monkeypatch.setenv("HOME", str(tmp_path))
    root = write_split(ShapesDataset("shapes", size=1, seed=3), "~/export", show_progress=False)
    assert root == tmp_path / "export" and (root / "export.json").is_file()
