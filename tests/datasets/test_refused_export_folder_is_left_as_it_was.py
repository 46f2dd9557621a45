"""write_split refuses a folder of other files without touching them, ``.tmp-*`` files included.

It removed the stale-looking ``.tmp-*`` files (a day old, or of a process that is gone) of any
folder it was given before it looked whether the folder was an export at all: a user's
``.tmp-draft`` in a folder that was then refused was gone. Those of an export of the same data
set, and of a folder holding nothing else (an export killed before its marker was written), are
still cleared.
"""

from __future__ import annotations

import os
import time

import pytest

from ctc_plugin.datasets import ShapesDataset, write_split


def _old(path):
    path.write_text("mine")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(path, (two_days_ago, two_days_ago))
    return path


def test_a_refused_folder_keeps_its_temporary_looking_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    draft = _old(tmp_path / ".tmp-draft")
    with pytest.raises(ValueError, match="holds no export"):
        write_split(ShapesDataset("shapes", size=1, seed=3), tmp_path, show_progress=False)
    assert draft.read_text() == "mine"


def test_a_folder_of_stale_temporaries_only_is_taken_and_cleared(tmp_path):
    _old(tmp_path / ".tmp-export.json-otherhost-123-abc")
    write_split(ShapesDataset("shapes", size=1, seed=3), tmp_path, show_progress=False)
    assert not list(tmp_path.glob(".tmp-*")) and (tmp_path / "labels.csv").exists()


def test_an_export_of_the_same_data_set_is_cleared_of_stale_temporaries(tmp_path):
    data = ShapesDataset("shapes", size=1, seed=3)
    write_split(data, tmp_path, show_progress=False)
    _old(tmp_path / ".tmp-labels.csv-otherhost-123-abc")
    write_split(data, tmp_path, show_progress=False)
    assert not list(tmp_path.glob(".tmp-*"))
