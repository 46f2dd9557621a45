"""A resume refused because SOURCE's class folders changed says so, and what to do.

An outside review found: an empty class folder added to SOURCE after a run (``photos/zzz/``,
which numbers no image differently) was refused with "to resume it, give the options it was
started with", naming ``source.classes``, which is no option; and one that sorts first (``aaa/``)
was reported only as every image having moved to another class.
"""

from __future__ import annotations

from ctc_plugin.cli import main
from tests.runs.test_resume_refusals_name_the_cause import _error, _explain, _folder


def test_an_empty_class_folder_added_is_named_with_what_to_do(tmp_path, capsys):
    folder, out = _folder(tmp_path), tmp_path / "run"
    assert main(_explain(folder, out)) == 0
    (folder / "zzz").mkdir()
    capsys.readouterr()
    assert main(_explain(folder, out)) == 2
    error = _error(capsys)
    assert "empty class folders added: zzz/" in error, error
    assert "give the options it was started with" not in error, error
    assert "put them back as they were to resume it, or choose another --out" in error, error
    (folder / "zzz").rmdir()
    assert main(_explain(folder, out)) == 0  # as it was: the run resumes


def test_a_class_folder_that_shifts_the_labels_is_named(tmp_path, capsys):
    folder, out = _folder(tmp_path), tmp_path / "run"
    assert main(_explain(folder, out)) == 0
    (folder / "aaa").mkdir()
    capsys.readouterr()
    assert main(_explain(folder, out)) == 2
    error = _error(capsys)
    assert "empty class folders added: aaa/" in error, error


def test_a_class_folder_removed_is_named(tmp_path, capsys):
    folder, out = _folder(tmp_path), tmp_path / "run"
    (folder / "zzz").mkdir()
    assert main(_explain(folder, out)) == 0
    (folder / "zzz").rmdir()
    capsys.readouterr()
    assert main(_explain(folder, out)) == 2
    error = _error(capsys)
    assert "empty class folders removed: zzz/" in error, error
    assert "give the options it was started with" not in error, error
