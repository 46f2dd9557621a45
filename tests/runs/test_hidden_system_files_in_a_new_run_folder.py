"""Files the system puts in any folder (``.DS_Store``, ``Thumbs.db``) do not make it a used one.

A review found: a new, otherwise empty ``--out`` holding the ``.DS_Store`` a file browser left
was refused as "a folder with other files and no manifest.json". Hidden entries and the
system's own files are no results of anyone's; a folder with a file of the user's is still
refused, and so is one where a writer's temporary file is under way.
"""

from __future__ import annotations

import pytest

from ctc_plugin.cli import main
from ctc_plugin.resumable import RunStore
from tests.runs.test_resume_refusals_name_the_cause import _error, _explain, _folder


@pytest.mark.parametrize("names", [[".DS_Store"], ["Thumbs.db", "desktop.ini", ".Trashes/"]])
def test_a_new_folder_with_only_system_files_takes_the_run(tmp_path, capsys, names):
    folder, out = _folder(tmp_path), tmp_path / "run"
    out.mkdir()
    for name in names:
        if name.endswith("/"):
            (out / name).mkdir()
        else:
            (out / name).write_bytes(b"\0\0\0\1Bud1")
    assert main(_explain(folder, out)) == 0
    assert "4 images in 2 shards (2 computed now" in capsys.readouterr().out
    assert all((out / name).exists() for name in names)  # left as they were


def test_a_folder_with_a_file_of_the_users_is_still_refused(tmp_path, capsys):
    folder, out = _folder(tmp_path), tmp_path / "run"
    out.mkdir()
    (out / ".DS_Store").write_bytes(b"")
    (out / "notes.txt").write_text("mine")
    assert main(_explain(folder, out)) == 2
    assert "is a folder with other files and no manifest.json" in _error(capsys)


def test_a_run_that_finished_no_shard_gives_way_beside_a_ds_store(tmp_path):
    """A start that finished no shard (a wrong option) gives way to the next; a file browser
    that opened its folder meanwhile does not make it stay."""
    store = RunStore(tmp_path / "run")
    store.open({"job": "j", "config": {"a": 1}}, restart_unfinished=True)
    (store.root / ".DS_Store").write_bytes(b"")
    store.open({"job": "j", "config": {"a": 2}}, restart_unfinished=True)
    assert store.manifest()["config"] == {"a": 2}
