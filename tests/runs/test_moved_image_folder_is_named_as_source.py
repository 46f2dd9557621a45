"""A resume refused because the image folder moved names SOURCE and says to give the run's.

An outside review found: ``source.spec: '/a/photos' there, '/a/moved' now; to resume it, give
the options it was started with``, naming a manifest key that is no option of the command.
"""

from __future__ import annotations

from ctc_plugin.cli import main
from tests.runs.test_resume_refusals_name_the_cause import _error, _explain, _folder


def test_an_image_folder_moved_since_the_run_is_named_as_source(tmp_path, capsys):
    """``source.spec: '/a/photos' there, '/a/moved' now; to resume it, give the options it was
    started with`` named no option: SOURCE is the folder's path, given first."""
    folder, out = _folder(tmp_path), tmp_path / "run"
    assert main(_explain(folder, out)) == 0
    moved = folder.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(_explain(moved, out)) == 2
    error = _error(capsys)
    assert f"SOURCE: '{folder}' there, '{moved}' now" in error, error
    assert "give the options it was started with" not in error, error
    assert f"give SOURCE {folder} (move the folder back if it was moved)" in error, error
