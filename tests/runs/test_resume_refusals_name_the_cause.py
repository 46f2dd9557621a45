"""A refused resume names its real cause, and a resumed run that says "done" can be read.

An outside review found: an ``--out`` of another run whose image had changed told the user to
delete a finished shard instead of naming the options that differ; leaving out ``--images`` on
resume said the folder's images had changed (they had not); a damaged shard table was reported
as changed images once the images' file times changed, and without that a truncated ``.parquet``
or a deleted ``.npz`` was not noticed at all (the run said "0 computed now" and only reading
failed); the folder refusals counted one thing as several; and the command line named manifest
keys (``shard_size``) instead of its options (``--shard-size``).
"""

from __future__ import annotations

import os

import pytest
from PIL import Image

from ctc_plugin.cli import main
from ctc_plugin.resumable import ConfigMismatchError, RunStore
from ctc_plugin.runs import SourceError, explain_dataset, resolve_source
from tests.runs.test_run_identity import _image

#: A fast run: the tiny ``module:callable`` model (3 classes), a 2 x 2 grid, two images a shard.
FAST = [
    "--methods", "gradcam", "--segmenter", "grid", "--segments", "4", "--shard-size", "2",
    "--no-progress", "--model", "tests.runs.test_explain_dataset:tiny",
]  # fmt: skip


def _explain(folder, out, *options: str) -> list[str]:
    return ["explain-dataset", str(folder), *FAST, "--out", str(out), *options]


def _error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert error.startswith("ctc-plugin explain-dataset: error: "), error
    return error


def _folder(tmp_path, names=("ring/000.png", "ring/001.png", "cross/000.png", "cross/001.png")):
    folder = tmp_path / "photos"
    for name in names:
        _image(folder / name, 12, 12)
    return folder


def _another_picture(path) -> None:
    Image.new("RGB", (12, 12), (200, 10, 10)).save(path)


def test_another_runs_options_are_named_before_a_changed_image(tmp_path, capsys):
    """The review's case: ``--methods ctc`` run in ``out``, an image changed, then ``--methods
    gradcam --model vgg``: "delete re/shards/shard-00001.parquet" was said first."""
    folder, out = _folder(tmp_path), tmp_path / "run"
    assert main(_explain(folder, out)) == 0
    _another_picture(folder / "ring" / "001.png")
    capsys.readouterr()
    assert main(_explain(folder, out, "--methods", "ctc", "--segments", "9")) == 2
    error = _error(capsys)
    assert "holds a run with a different configuration" in error, error
    assert "--methods: ['gradcam'] there, ['ctc'] now" in error, error
    assert "--segments: 4 there, 9 now" in error, error
    assert "changed since" not in error and ".parquet" not in error, error
    # the run's own options: now the changed image is the reason
    assert main(_explain(folder, out)) == 2
    assert "the image ring/001.png changed since its shard was finished" in _error(capsys)


def test_leaving_out_images_on_resume_names_the_runs_images_option(tmp_path, capsys):
    """ "images: 3 there, 4 now; the images of ... changed since this run started (added: ...)"
    was said of a folder that had not changed: the run was started with ``--images 3``."""
    folder, out = _folder(tmp_path), tmp_path / "run"
    assert main(_explain(folder, out, "--images", "3")) == 0
    capsys.readouterr()
    for more in ([], ["--images", "4"], ["--images", "9"]):
        assert main(_explain(folder, out, *more)) == 2
        error = _error(capsys)
        assert "this run was started with --images 3; give --images 3 to resume it" in error
        assert "changed since" not in error and "added" not in error, error
        assert "shards:" not in error, error  # follows from the image count
    assert main(_explain(folder, out, "--images", "3")) == 0
    assert "0 computed now, 2 finished before" in capsys.readouterr().out


def test_images_added_after_a_run_of_all_images_are_still_named_as_added(tmp_path, capsys):
    folder, out = _folder(tmp_path), tmp_path / "run"
    assert main(_explain(folder, out)) == 0
    _image(folder / "ring" / "002.png", 12, 12)  # sorts last: the run's images come first
    capsys.readouterr()
    assert main(_explain(folder, out)) == 2
    error = _error(capsys)
    assert "changed since this run started (added: ring/002.png)" in error, error
    assert "--images" not in error, error


def test_a_run_that_recorded_no_images_option_names_both_causes(tmp_path, capsys):
    """A ``plan.json`` of an earlier version does not say whether ``--images`` cut the list."""
    folder, out = _folder(tmp_path), tmp_path / "run"
    assert main(_explain(folder, out, "--images", "3")) == 0
    plan = RunStore(out).plan()
    del plan["limit"]
    (out / "plan.json").write_text(__import__("json").dumps(plan))
    capsys.readouterr()
    assert main(_explain(folder, out)) == 2
    error = _error(capsys)
    assert "if the run was started with --images 3, give --images 3 to resume it" in error
    assert "if the files were added since (ring/001.png), remove them" in error, error


def _damage(path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:30])
    else:
        path.unlink()


@pytest.mark.parametrize(
    ("suffix", "how"), [(".parquet", "truncated"), (".npz", "truncated"), (".npz", "deleted")]
)
def test_a_resume_refuses_a_finished_shard_that_cannot_be_read(tmp_path, capsys, suffix, how):
    """The run said "0 computed now, 2 finished before" over a shard no reader could read."""
    folder, out = _folder(tmp_path), tmp_path / "run"
    assert main(_explain(folder, out)) == 0
    store = RunStore(out)
    _damage(store.shards / f"shard-00001{suffix}", how)
    capsys.readouterr()
    assert main(_explain(folder, out)) == 2
    error = _error(capsys)
    assert f"cannot read the shard shard-00001 of {out}: shard-00001{suffix}: " in error, error
    assert f"delete {store.table_path('shard-00001')} to compute it again" in error, error
    with pytest.raises(ValueError, match="cannot read the shard shard-00001"):
        explain_dataset(
            folder, ["gradcam"], out, model="tests.runs.test_explain_dataset:tiny",
            segmenter="grid", segments=4, shard_size=2, show_progress=False,
        )  # fmt: skip
    # as it says: the shard is computed again, the other one kept
    store.table_path("shard-00001").unlink()
    assert main(_explain(folder, out)) == 0
    assert "1 computed now, 1 finished before" in capsys.readouterr().out


def test_a_damaged_shard_table_is_not_reported_as_changed_images(tmp_path, capsys):
    """``chmod -R g+w`` changed the images' change times, so their contents were compared with
    what the shard's table recorded, which did not parse: "the images ... changed"."""
    folder, out = _folder(tmp_path), tmp_path / "run"
    assert main(_explain(folder, out)) == 0
    store = RunStore(out)
    _damage(store.table_path("shard-00001"), "truncated")
    for path in folder.rglob("*.png"):
        os.chmod(path, 0o664)  # the change time moves, the content stays
        os.utime(path, ns=(1, 1))
    capsys.readouterr()
    assert main(_explain(folder, out)) == 2
    error = _error(capsys)
    assert "changed since" not in error, error
    assert "cannot read the shard shard-00001" in error, error
    assert f"delete {store.table_path('shard-00001')} to compute it again" in error, error


def test_several_damaged_shards_are_named_in_one_line(tmp_path, capsys):
    folder, out = _folder(tmp_path), tmp_path / "run"
    assert main(_explain(folder, out, "--shard-size", "1")) == 0
    store = RunStore(out)
    for name in ("shard-00001", "shard-00003"):
        _damage(store.arrays_path(name), "deleted")
    capsys.readouterr()
    assert main(_explain(folder, out, "--shard-size", "1")) == 2
    error = _error(capsys)
    assert "cannot read 2 finished shards of" in error, error
    assert "shard-00001 (shard-00001.npz: " in error and "shard-00003 (shard-00003.npz: " in error
    paths = f"{store.table_path('shard-00001')}, {store.table_path('shard-00003')}"
    assert f"delete {paths} to compute them again" in error, error


def test_a_lone_top_level_image_beside_class_folders_is_named_without_dots(tmp_path):
    folder = _folder(tmp_path, ("top.png", "ring/000.png"))
    with pytest.raises(SourceError) as raised:
        resolve_source(folder)
    message = str(raised.value)
    assert "mixes images at its top level (top.png) with class subfolders (ring/)" in message
    _image(folder / "other.png", 12, 12)
    _image(folder / "cross" / "000.png", 12, 12)
    with pytest.raises(SourceError, match=r"\(other.png, top.png\) with class subfolders "):
        resolve_source(folder)


def test_the_command_names_its_options_where_python_names_its_arguments(tmp_path, capsys):
    folder, out = _folder(tmp_path), tmp_path / "run"
    assert main(_explain(folder, out)) == 0
    capsys.readouterr()
    assert main(_explain(folder, out, "--shard-size", "3", "--seed", "4")) == 2
    error = _error(capsys)
    assert "(--seed: 1 there, 4 now; --shard-size: 2 there, 3 now)" in error, error
    with pytest.raises(ConfigMismatchError, match=r"\(shard_size: 2 there, 3 now\)"):
        explain_dataset(
            folder, ["gradcam"], out, model="tests.runs.test_explain_dataset:tiny",
            segmenter="grid", segments=4, shard_size=3, show_progress=False,
        )  # fmt: skip


def test_every_option_the_command_names_is_one_of_its_options():
    import argparse

    from ctc_plugin.runs import command

    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    (explain,) = parser._subparsers._group_actions[0].choices.values()
    flags = {flag for action in explain._actions for flag in action.option_strings}
    for source in ("shapes", "photos"):
        named = command.option_names(source)
        assert set(named.values()) <= flags, set(named.values()) - flags
    assert "images" in command.option_names("shapes") and "images" not in named
