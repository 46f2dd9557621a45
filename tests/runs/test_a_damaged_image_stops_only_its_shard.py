"""An image damaged past its header leaves only its own shard undone: the run does the rest.

An outside review found: one photo cut short (a partial download) among many stopped the whole
run at its shard, so an overnight run over a folder of photos did nothing after it; the user
replaced the file and ran again only to meet the next one. Now the other shards are computed
and kept, and the run ends with one error line naming every such image.
"""

from __future__ import annotations

from ctc_plugin.cli import main
from ctc_plugin.resumable import RunStore
from ctc_plugin.runs import read_results
from tests.runs.test_run_identity import _image

FAST = [
    "--methods", "gradcam", "--segmenter", "grid", "--segments", "4", "--shard-size", "2",
    "--no-progress", "--model", "tests.runs.test_explain_dataset:tiny",
]  # fmt: skip
NAMES = [f"{i:02d}.png" for i in range(8)]


def _folder(path):
    for name in NAMES:
        _image(path / name, 12, 12)
    return path


def _cut_short(path) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header is whole: the listing takes it
    return data


def _explain(folder, out) -> list[str]:
    return ["explain-dataset", str(folder), *FAST, "--out", str(out)]


def _without_timings(out):
    return read_results(out).drop(["seconds", "segment_seconds"])


def test_the_other_shards_are_computed_and_every_damaged_image_named(tmp_path, capsys):
    folder, out = _folder(tmp_path / "photos"), tmp_path / "run"
    kept = {name: _cut_short(folder / name) for name in ("03.png", "06.png")}  # shards 1, 3
    assert main(_explain(folder, out)) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert "03.png" in error and "06.png" in error, error
    assert "run the same command again" in error, error
    assert RunStore(out).finished() == ["shard-00000", "shard-00002"]
    for name, data in kept.items():
        (folder / name).write_bytes(data)
    assert main(_explain(folder, out)) == 0
    assert "2 computed now" in capsys.readouterr().out
    assert main(_explain(folder, tmp_path / "clean")) == 0
    assert _without_timings(out).equals(_without_timings(tmp_path / "clean"))


def test_one_damaged_image_is_named_with_what_to_do(tmp_path, capsys):
    folder, out = _folder(tmp_path / "photos"), tmp_path / "run"
    _cut_short(folder / "05.png")
    assert main(_explain(folder, out)) == 2
    error = capsys.readouterr().err.strip()
    assert "05.png" in error and "image file is truncated" in error, error
    assert RunStore(out).finished() == ["shard-00000", "shard-00001", "shard-00003"]


def test_a_damaged_first_image_stops_only_its_shard_too(tmp_path, capsys):
    """The run's checks read its first image before any work: a damaged one stopped the start,
    so none of the other shards was computed. The checks now read the first readable image."""
    folder, out = _folder(tmp_path / "photos"), tmp_path / "run"
    _cut_short(folder / "00.png")
    assert main(_explain(folder, out)) == 2
    error = capsys.readouterr().err.strip()
    assert "00.png" in error and "image file is truncated" in error, error
    assert RunStore(out).finished() == ["shard-00001", "shard-00002", "shard-00003"]
