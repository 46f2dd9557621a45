"""Images rewritten under their names are found in the shards that explained them; run folders.

The audit found the check of rewritten images working out shards from the new command's
``--shard-size`` (naming the wrong shard, or an image as changed where only the shard size
differed), skipped where ``plan.json`` was gone, and blind to a copy that kept the size and
modification time (``cp -p`` of a BMP); ``explained_pixels`` returned a replaced image's new
pixels. An ``--out`` inside SOURCE made a run that could never resume, and a dangling link as
``--out`` looped on "run the same command again to resume".
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from ctc_plugin.cli import main
from ctc_plugin.runs import explained_pixels

FAST = [
    "--methods", "gradcam", "--segmenter", "grid", "--segments", "4", "--no-progress",
    "--model", "tests.runs.test_explain_dataset:tiny",
]  # fmt: skip


def _bmp(path, seed: int) -> None:
    """A 12 x 12 BMP: every picture of that size has the same file size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 12, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def _folder(tmp_path, count: int = 6):
    folder = tmp_path / "photos"
    for i in range(count):
        _bmp(folder / f"{i:02d}.bmp", i)
    return folder


def _explain(folder, out, shard_size: int = 2) -> list[str]:
    return [
        "explain-dataset",
        str(folder),
        *FAST,
        "--shard-size",
        str(shard_size),
        "--out",
        str(out),
    ]


def _error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


def _replace_keeping_size_and_times(path, seed: int) -> None:
    """Another picture copied over ``path`` as ``cp -p`` copies it: same size, same mtime."""
    stat = path.stat()
    _bmp(path, seed)
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_touched_image_under_another_shard_size_is_the_shard_size_mismatch(tmp_path, capsys):
    folder, out = _folder(tmp_path), tmp_path / "run"
    assert main(_explain(folder, out, shard_size=4)) == 0
    # touched, the same picture: image 2, in shard-00000 of 4 images, shard-00001 of 2, which
    # the run finished too (with images 4 and 5)
    os.utime(folder / "02.bmp", ns=(1, 1))
    capsys.readouterr()
    assert main(_explain(folder, out, shard_size=2)) == 2
    error = _error(capsys)
    assert "changed since" not in error and "--shard-size: 4 there, 2 now" in error, error


def test_a_replaced_image_is_named_with_the_shard_that_explained_it(tmp_path, capsys):
    folder, out = _folder(tmp_path), tmp_path / "run"
    assert main(_explain(folder, out, shard_size=4)) == 0
    _bmp(folder / "05.bmp", 99)  # image 5: in shard-00001 of 4 images, shard-00002 of 2
    capsys.readouterr()
    # another shard size is another run: named first, as any other option that differs
    assert main(_explain(folder, out, shard_size=2)) == 2
    error = _error(capsys)
    assert "--shard-size: 4 there, 2 now" in error and "changed since" not in error, error
    assert main(_explain(folder, out, shard_size=4)) == 2
    error = _error(capsys)
    assert "the image 05.bmp changed since its shard was finished" in error, error
    assert "shard-00001.parquet" in error and "shard-00002" not in error, error


def test_a_replaced_image_is_found_without_plan_json(tmp_path, capsys):
    folder, out = _folder(tmp_path, 4), tmp_path / "run"
    assert main(_explain(folder, out)) == 0
    (out / "plan.json").unlink()
    _bmp(folder / "00.bmp", 99)
    capsys.readouterr()
    assert main(_explain(folder, out)) == 2
    assert "the image 00.bmp changed since its shard was finished" in _error(capsys)
    _bmp(folder / "00.bmp", 0)  # put back
    assert main(_explain(folder, out)) == 0
    assert "0 computed now, 2 finished before" in capsys.readouterr().out


def test_a_copy_keeping_the_size_and_modification_time_is_found(tmp_path, capsys):
    folder, out = _folder(tmp_path, 4), tmp_path / "run"
    assert main(_explain(folder, out)) == 0
    _replace_keeping_size_and_times(folder / "01.bmp", 99)
    capsys.readouterr()
    assert main(_explain(folder, out)) == 2
    assert "the image 01.bmp changed since its shard was finished" in _error(capsys)


def test_explained_pixels_refuses_an_image_replaced_since_it_was_explained(tmp_path):
    folder, out = _folder(tmp_path, 4), tmp_path / "run"
    assert main(_explain(folder, out)) == 0
    before = explained_pixels(out, 2)
    _replace_keeping_size_and_times(folder / "02.bmp", 99)
    with pytest.raises(ValueError, match=r"the image 02.bmp of .* changed since the run in"):
        explained_pixels(out, [1, 2])
    explained_pixels(out, 3)  # the others read as before
    _bmp(folder / "02.bmp", 2)  # put back
    assert np.array_equal(explained_pixels(out, 2).numpy(), before.numpy())


@pytest.mark.parametrize("layout", ["class folders", "flat"])
def test_an_out_inside_source_is_refused_before_any_work(tmp_path, capsys, layout):
    folder = tmp_path / "photos"
    for i in range(2):
        _bmp(folder / ("cat" if layout == "class folders" else "") / f"{i}.bmp", i)
    out = folder / "run"
    assert main(_explain(folder, out)) == 2
    assert "lies inside SOURCE" in _error(capsys)
    assert not out.exists()
    assert main(_explain(folder, folder)) == 2
    assert "lies inside SOURCE" in _error(capsys)


def test_a_dangling_link_as_out_is_named(tmp_path, capsys):
    folder, link = _folder(tmp_path, 2), tmp_path / "out"
    link.symlink_to(tmp_path / "missing")
    assert main(_explain(folder, link)) == 2
    error = _error(capsys)
    assert "is a link to" in error and "which does not exist" in error, error
    assert "resume" not in error


def test_a_run_of_an_earlier_version_resumes(tmp_path, capsys):
    """Its plan.json holds (size, mtime) per image and its tables no contents: every image was
    suspect (2 fields never equal 4) and, unrecorded, refused as changed."""
    import json

    import pyarrow.parquet as pq

    from ctc_plugin.runs.results import IMAGE_SHA256_KEY

    folder, out = _folder(tmp_path, 4), tmp_path / "run"
    assert main(_explain(folder, out)) == 0
    plan = json.loads((out / "plan.json").read_text())
    plan["images"] = [row[:4] for row in plan["images"]]  # name, label, size, mtime
    (out / "plan.json").write_text(json.dumps(plan))
    for path in out.rglob("*.parquet"):
        table = pq.read_table(path)
        metadata = {
            key: value
            for key, value in (table.schema.metadata or {}).items()
            if key != IMAGE_SHA256_KEY.encode()
        }
        pq.write_table(table.replace_schema_metadata(metadata), path)
    capsys.readouterr()
    assert main(_explain(folder, out)) == 0, capsys.readouterr().err
    _replace_keeping_size_and_times(folder / "00.bmp", 99)  # what such a run could not see
    _bmp(folder / "01.bmp", 98)  # a rewrite it could: another mtime
    os.utime(folder / "01.bmp", ns=(5, 5))
    capsys.readouterr()
    assert main(_explain(folder, out)) == 2
    assert "01.bmp" in _error(capsys)


def test_an_out_inside_a_linked_class_folder_is_refused(tmp_path, capsys):
    """The listing follows a class folder that is a link: its target is inside SOURCE too."""
    folder, elsewhere = tmp_path / "photos", tmp_path / "elsewhere" / "dog"
    _bmp(folder / "cat" / "0.bmp", 0)
    _bmp(elsewhere / "1.bmp", 1)
    (folder / "dog").symlink_to(elsewhere, target_is_directory=True)
    for out in (elsewhere / "run", folder / "dog" / "run"):
        assert main(_explain(folder, out)) == 2
        assert "lies inside SOURCE" in _error(capsys)
        assert not out.exists()
