"""A run folder moved elsewhere resumes; a moved image folder is named with what to do.

A run records no path of its own folder (only its image folder's, resolved, and its files'), so
``--out`` moved or copied to another place resumes there, computing only the shards left. A
review found that the same command after the image folder was moved said only ``SOURCE
'/a/photos' is neither an image folder nor one of shapes, shapes:composite``, not that the run
in ``--out`` explains the images that were there, nor how to resume it.
"""

from __future__ import annotations

import shutil

import pytest

from ctc_plugin.cli import main
from ctc_plugin.runs import SourceError, explained_pixels, read_results
from tests.runs.test_resume_refusals_name_the_cause import _error, _explain, _folder


def test_a_run_folder_moved_or_copied_elsewhere_resumes_there(tmp_path, capsys):
    folder, out = _folder(tmp_path), tmp_path / "run"
    assert main(_explain(folder, out)) == 0
    (out / "shards" / "shard-00001.parquet").unlink()  # as a run killed before its last shard
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    out.rename(moved)
    copied = tmp_path / "copy"
    shutil.copytree(moved, copied)  # new files: other inodes and times
    capsys.readouterr()
    for run in (moved, copied):
        assert main(_explain(folder, run)) == 0
        assert "(1 computed now, 1 finished before" in capsys.readouterr().out
        assert read_results(run).num_rows == 4
        assert tuple(explained_pixels(run, 3).shape[:2]) == (1, 3)


def test_the_same_command_after_the_image_folder_moved_says_to_move_it_back(tmp_path, capsys):
    folder, out = _folder(tmp_path), tmp_path / "run"
    assert main(_explain(folder, out)) == 0
    moved = folder.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(_explain(folder, out)) == 2  # the same command, the folder gone
    error = _error(capsys)
    assert f"SOURCE '{folder}' is no folder now" in error, error
    assert f"the run in --out {out} explains the images that were there" in error, error
    assert f"move the folder back to {folder} to resume the run" in error, error
    # where it is now, SOURCE is named with the run's folder, as before
    assert main(_explain(moved, out)) == 2
    assert f"give SOURCE {folder} (move the folder back if it was moved)" in _error(capsys)


def test_explained_pixels_of_a_run_whose_image_folder_moved_says_to_move_it_back(tmp_path):
    folder, out = _folder(tmp_path), tmp_path / "run"
    assert main(_explain(folder, out)) == 0
    folder.rename(tmp_path / "moved")
    with pytest.raises(SourceError) as refused:
        explained_pixels(out, 0)
    message = str(refused.value)
    assert f"the run in {out} explains the images of {folder}, which is no folder now" in message
    assert f"move the folder back to {folder} to read the pixels it explained" in message
